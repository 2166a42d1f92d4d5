//! System accounts that packages' maintainer scripts create, read as data
//! (the scripts are never run): `adduser --system`, `addgroup --system`,
//! `useradd -r`, `groupadd -r` and `adduser USER GROUP` in `preinst` and
//! `postinst`, and systemd's `sysusers.d` lines (`u`, `g`, `m`), applied to
//! the image's account files with the ids the real tools would pick:
//! - `adduser`/`addgroup` (Debian's, with its default `adduser.conf`): the
//!   first free id from 100 up to 999 (uid and gid each on their own); a
//!   user without `--group`, `--ingroup` or `--gid` goes in `nogroup`; home
//!   `/nonexistent` unless `--home`, shell `/usr/sbin/nologin`; a comment
//!   becomes `C,,,` as `chfn` writes it; the home is created (mode 0755,
//!   owned by the user) unless `--no-create-home` or `/nonexistent`.
//! - `useradd -r`/`groupadd -r` (shadow's, with Debian's `login.defs`): the
//!   id below the lowest one in use between 101 and 999, or else the highest
//!   free one; a user gets a group of its own name (gid = uid when free);
//!   home `/home/NAME` (created only with `-m`), shell `/bin/sh`.
//! - `sysusers.d` (as `systemd-sysusers` applies a file: groups, users,
//!   memberships): the highest id from 999 down free as a uid and a gid
//!   (a group's: the highest free gid); home `/`, shell `/usr/sbin/nologin`.
//!
//! An account that already exists by name is kept as it is. A call whose
//! name or options come from a shell variable or a command substitution
//! cannot be read: that is an error naming the package and the line.

use crate::source::accounts::AccountFiles;

/// How a user's primary group is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// A group of the user's own name (`--group`, useradd's default).
    Own,
    /// A named group (`--ingroup`, `-g NAME`).
    Named(String),
    /// A gid (`--gid`, `-g N`).
    Gid(u32),
    /// `nogroup` (adduser without a group option).
    Nogroup,
}

/// Which tool's id rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Debian's `adduser`/`addgroup`.
    Adduser,
    /// shadow's `useradd`/`groupadd`.
    Useradd,
    /// `systemd-sysusers`.
    Sysusers,
}

/// One account a package creates, as its script or `sysusers.d` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A system user.
    User {
        /// Its name.
        name: String,
        /// The uid asked for.
        uid: Option<u32>,
        /// Its primary group.
        primary: Primary,
        /// Its home.
        home: String,
        /// Whether the tool makes the home directory.
        create_home: bool,
        /// Its shell.
        shell: String,
        /// Its comment (GECOS).
        gecos: String,
        /// Supplementary groups (`useradd -G`).
        groups: Vec<String>,
        /// Whose rules allocate ids.
        tool: Tool,
    },
    /// A system group.
    Group {
        /// Its name.
        name: String,
        /// The gid asked for.
        gid: Option<u32>,
        /// Whose rules allocate ids.
        tool: Tool,
    },
    /// A user added to a group.
    Member {
        /// The user.
        user: String,
        /// The group.
        group: String,
    },
}

impl Call {
    /// The account's name, and whether it is a user (`None` for membership).
    pub fn account(&self) -> Option<(&str, bool)> {
        match self {
            Call::User { name, .. } => Some((name, true)),
            Call::Group { name, .. } => Some((name, false)),
            Call::Member { .. } => None,
        }
    }
}

/// A call kiln cannot read: its 1-based line and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The line it starts on.
    pub line: usize,
    /// The call as written.
    pub text: String,
    /// Why it cannot be read.
    pub why: String,
    /// The account name, when it is a literal.
    pub name: Option<String>,
}

/// One word of a shell command: its text, and whether it expands at run time.
#[derive(Debug, Clone)]
struct Word {
    text: String,
    expands: bool,
}

/// The script with here-document bodies blanked (their lines kept, for
/// line numbers): they are text, not commands, and may hold stray quotes.
fn without_heredocs(script: &str) -> String {
    let mut out = String::new();
    let mut until: Option<String> = None;
    for line in script.split_inclusive('\n') {
        if let Some(end) = &until {
            if line.trim() == end {
                until = None;
            }
            out.push('\n');
            continue;
        }
        out.push_str(line);
        if let Some((_, rest)) = line.split_once("<<").filter(|(_, r)| !r.starts_with('<')) {
            let word: String = rest
                .trim_start_matches('-')
                .trim_start()
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, ';' | '&' | '|' | ')'))
                .filter(|c| !matches!(c, '\'' | '"' | '\\'))
                .collect();
            if !word.is_empty() {
                until = Some(word);
            }
        }
    }
    out
}

/// Splits a script into simple commands (words, first line, source text).
fn commands(script: &str) -> Vec<(Vec<Word>, usize, String)> {
    let script = &without_heredocs(script);
    let mut out = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut cur: Option<Word> = None;
    let mut line = 1;
    let mut start_line = 1;
    let mut text = String::new();
    let chars: Vec<char> = script.chars().collect();
    let mut i = 0;
    let flush_word = |cur: &mut Option<Word>, words: &mut Vec<Word>| {
        if let Some(w) = cur.take() {
            words.push(w);
        }
    };
    macro_rules! end_command {
        () => {{
            flush_word(&mut cur, &mut words);
            if !words.is_empty() {
                out.push((
                    std::mem::take(&mut words),
                    start_line,
                    text.trim().to_string(),
                ));
            }
            text.clear();
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        if words.is_empty() && cur.is_none() && !c.is_whitespace() {
            start_line = line;
        }
        match c {
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                line += 1;
                text.push(' ');
                i += 2;
                continue;
            }
            '\\' => {
                let w = cur.get_or_insert(Word {
                    text: String::new(),
                    expands: false,
                });
                if let Some(&n) = chars.get(i + 1) {
                    w.text.push(n);
                    text.push(c);
                    text.push(n);
                }
                i += 2;
                continue;
            }
            '#' if cur.is_none() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\n' | ';' | '&' | '|' | '(' | ')' => {
                if c == '\n' {
                    line += 1;
                }
                end_command!();
                i += 1;
                continue;
            }
            ' ' | '\t' | '\r' => {
                flush_word(&mut cur, &mut words);
            }
            '\'' => {
                let w = cur.get_or_insert(Word {
                    text: String::new(),
                    expands: false,
                });
                text.push(c);
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    w.text.push(chars[i]);
                    text.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                let w = cur.get_or_insert(Word {
                    text: String::new(),
                    expands: false,
                });
                text.push(c);
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) => {
                            w.text.push(chars[i + 1]);
                            text.push(chars[i]);
                            text.push(chars[i + 1]);
                            i += 2;
                            continue;
                        }
                        '$' | '`' => w.expands = true,
                        '\n' => line += 1,
                        _ => {}
                    }
                    w.text.push(chars[i]);
                    text.push(chars[i]);
                    i += 1;
                }
            }
            _ => {
                let w = cur.get_or_insert(Word {
                    text: String::new(),
                    expands: false,
                });
                if matches!(c, '$' | '`' | '*' | '?' | '[' | '{' | '~') {
                    w.expands = true;
                }
                w.text.push(c);
            }
        }
        if i < chars.len() {
            text.push(c);
        }
        i += 1;
    }
    end_command!();
    out
}

/// The account calls of a maintainer script, in script order.
pub fn script_calls(script: &str) -> std::result::Result<Vec<Call>, Unreadable> {
    let mut out = Vec::new();
    let commands = commands(script);
    // Every literal value each shell variable is assigned in the script.
    let mut assigned: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (words, _, _) in &commands {
        for w in words.iter().take_while(|w| is_assignment(&w.text)) {
            let (k, v) = w.text.split_once('=').expect("an assignment");
            assigned
                .entry(k)
                .or_default()
                .push(if w.expands { "\0" } else { v });
        }
    }
    let values_of = |w: &Word| {
        w.text
            .strip_prefix("${")
            .and_then(|n| n.strip_suffix('}'))
            .or_else(|| w.text.strip_prefix('$'))
            .and_then(|n| assigned.get(n))
    };
    // `$quiet` where the script only ever sets `quiet="--quiet"` changes
    // nothing kiln reads, set or not: such a word is dropped.
    let harmless = |w: &Word| {
        values_of(w).is_some_and(|values| {
            values.iter().all(|v| {
                matches!(
                    *v,
                    "" | "--quiet"
                        | "-q"
                        | "--disabled-login"
                        | "--disabled-password"
                        | "--verbose"
                )
            })
        })
    };
    // `"$USER"` where the script only ever sets `USER=messagebus`: that value.
    let constant = |w: &Word| {
        values_of(w)
            .filter(|values| {
                values
                    .iter()
                    .all(|v| *v == values[0] && *v != "\0" && !v.contains(char::is_whitespace))
            })
            .map(|values| values[0].to_string())
    };
    let is_tool = |w: &Word| {
        matches!(
            w.text.rsplit('/').next().unwrap_or_default(),
            "adduser" | "addgroup" | "useradd" | "groupadd"
        )
    };
    for (words, line, text) in &commands {
        let (line, text) = (*line, text.clone());
        // Skip keywords and assignments before the command word.
        let at = words.iter().position(|w| {
            !matches!(
                w.text.as_str(),
                "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "command"
            ) && (!w.text.contains('=') || w.text.starts_with('-'))
        });
        let Some(mut at) = at else { continue };
        // A wrapper function (dbus's `in_sysroot adduser …`) runs the tool.
        let wrapper = |w: &Word| {
            !w.expands
                && w.text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !matches!(
                    w.text.as_str(),
                    "echo" | "printf" | "which" | "type" | "test"
                )
        };
        if !is_tool(&words[at]) && wrapper(&words[at]) && words.get(at + 1).is_some_and(is_tool) {
            at += 1;
        }
        let tool = words[at]
            .text
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if !matches!(
            tool.as_str(),
            "adduser" | "addgroup" | "useradd" | "groupadd"
        ) {
            continue;
        }
        // Redirections are not arguments.
        let mut args: Vec<Word> = Vec::new();
        let mut skip = false;
        for w in &words[at + 1..] {
            if skip {
                skip = false;
                continue;
            }
            let t = w
                .text
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '&');
            if t.starts_with('>') || t.starts_with('<') {
                skip = t.len() == 1 || t == ">>";
                continue;
            }
            if !w.expands {
                args.push(w.clone());
            } else if let Some(value) = constant(w) {
                args.push(Word {
                    text: value,
                    expands: false,
                });
            } else if !harmless(w) {
                args.push(w.clone());
            }
        }
        let unreadable = |why: &str, name: Option<String>| Unreadable {
            line,
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            why: why.to_string(),
            name,
        };
        let last_literal = args
            .last()
            .filter(|w| !w.expands && !w.text.starts_with('-'))
            .map(|w| w.text.clone());
        if let Some(w) = args.iter().find(|w| w.expands) {
            return Err(unreadable(
                &format!("`{}` comes from the shell at run time", w.text),
                last_literal,
            ));
        }
        let args: Vec<String> = args.iter().map(|w| w.text.clone()).collect();
        let call = match tool.as_str() {
            "adduser" | "addgroup" => adduser(&args, tool == "addgroup"),
            "useradd" => useradd(&args),
            _ => groupadd(&args),
        };
        match call {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {}
            Err(why) => return Err(unreadable(&why, last_literal)),
        }
    }
    Ok(out)
}

/// Whether a word is a shell assignment (`NAME=VALUE`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Splits `--opt=value` into `--opt` and `value`.
fn options(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => {
                out.push(k.to_string());
                out.push(v.to_string());
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn number(opt: &str, v: Option<&String>) -> Result<u32, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("`{opt}` needs a number"))
}

fn adduser(args: &[String], addgroup: bool) -> Result<Option<Call>, String> {
    let args = options(args);
    let (mut system, mut group, mut no_create) = (false, addgroup, false);
    let (mut uid, mut gid, mut ingroup, mut home, mut shell, mut gecos) =
        (None, None, None, None, None, None);
    let mut names = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let next = args.get(i + 1);
        let mut value = || {
            i += 1;
            next.cloned().ok_or_else(|| format!("`{a}` needs a value"))
        };
        match a {
            "--system" => system = true,
            "--group" => group = true,
            "--no-create-home" => no_create = true,
            "--quiet"
            | "-q"
            | "--disabled-login"
            | "--disabled-password"
            | "--force-badname"
            | "--allow-badname"
            | "--allow-bad-names"
            | "--allow-all-names"
            | "--verbose"
            | "--debug" => {}
            "--uid" => uid = Some(number(a, value().ok().as_ref())?),
            "--gid" => gid = Some(number(a, value().ok().as_ref())?),
            "--ingroup" => ingroup = Some(value()?),
            "--home" => home = Some(value()?),
            "--shell" => shell = Some(value()?),
            "--gecos" | "--comment" => gecos = Some(value()?),
            _ if a.starts_with('-') => return Err(format!("kiln does not know option `{a}`")),
            _ => names.push(a.to_string()),
        }
        i += 1;
    }
    match names.as_slice() {
        [user, group_name] if !system && !addgroup => Ok(Some(Call::Member {
            user: user.clone(),
            group: group_name.clone(),
        })),
        [_] if !system => Err("only system accounts (`--system`) are read".into()),
        [name] if addgroup => Ok(Some(Call::Group {
            name: name.clone(),
            gid,
            tool: Tool::Adduser,
        })),
        [name] => {
            let primary = match (group, ingroup, gid) {
                (true, None, None) => Primary::Own,
                (false, Some(g), None) => Primary::Named(g),
                (false, None, Some(g)) => Primary::Gid(g),
                (false, None, None) => Primary::Nogroup,
                _ => return Err("`--group`, `--ingroup` and `--gid` exclude each other".into()),
            };
            let home = home.unwrap_or_else(|| "/nonexistent".into());
            let create_home = !no_create && !is_nonexistent(&home);
            Ok(Some(Call::User {
                name: name.clone(),
                uid,
                primary,
                home,
                create_home,
                shell: shell.unwrap_or_else(|| "/usr/sbin/nologin".into()),
                gecos: gecos.map(|c| chfn(&c)).unwrap_or_default(),
                groups: Vec::new(),
                tool: Tool::Adduser,
            }))
        }
        _ => Err("expected one account name".into()),
    }
}

fn is_nonexistent(home: &str) -> bool {
    let h = home.trim_start_matches('/');
    h == "nonexistent" || h.starts_with("nonexistent/")
}

/// A comment as `chfn -f NAME [-r ROOM -w WORK -h HOME -o OTHER]` writes it.
fn chfn(comment: &str) -> String {
    let mut fields: Vec<&str> = comment.split(',').collect();
    while fields.len() < 4 {
        fields.push("");
    }
    fields.truncate(5);
    fields.join(",")
}

fn useradd(args: &[String]) -> Result<Option<Call>, String> {
    let args = options(args);
    let (mut system, mut create, mut own_group) = (false, false, true);
    let (mut uid, mut g, mut home, mut shell, mut gecos, mut groups) =
        (None, None, None, None, None, Vec::new());
    let mut names = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let next = args.get(i + 1).cloned();
        let mut value = || {
            i += 1;
            next.clone().ok_or_else(|| format!("`{a}` needs a value"))
        };
        match a {
            "-r" | "--system" => system = true,
            "-m" | "--create-home" => create = true,
            "-M" | "--no-create-home" => create = false,
            "-U" | "--user-group" => own_group = true,
            "-N" | "--no-user-group" => return Err("`-N` is not read".into()),
            "-l" | "--no-log-init" | "-o" | "--non-unique" => {}
            "-K" | "--key" => {
                value()?;
            }
            "-u" | "--uid" => uid = Some(number(a, Some(&value()?))?),
            "-g" | "--gid" => g = Some(value()?),
            "-d" | "--home-dir" | "--home" => home = Some(value()?),
            "-s" | "--shell" => shell = Some(value()?),
            "-c" | "--comment" => gecos = Some(value()?),
            "-G" | "--groups" => {
                groups = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            _ if a.starts_with('-') => return Err(format!("kiln does not know option `{a}`")),
            _ => names.push(a.to_string()),
        }
        i += 1;
    }
    let [name] = names.as_slice() else {
        return Err("expected one account name".into());
    };
    if !system && uid.is_none() {
        return Err("only system accounts (`-r`), or users with a `-u` uid, are read".into());
    }
    let primary = match g {
        Some(g) => match g.parse() {
            Ok(n) => Primary::Gid(n),
            Err(_) => Primary::Named(g),
        },
        None if own_group => Primary::Own,
        None => Primary::Nogroup,
    };
    Ok(Some(Call::User {
        name: name.clone(),
        uid,
        primary,
        home: home.unwrap_or_else(|| format!("/home/{name}")),
        create_home: create,
        shell: shell.unwrap_or_else(|| "/bin/sh".into()),
        gecos: gecos.unwrap_or_default(),
        groups,
        tool: Tool::Useradd,
    }))
}

fn groupadd(args: &[String]) -> Result<Option<Call>, String> {
    let args = options(args);
    let (mut system, mut gid) = (false, None);
    let mut names = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-r" | "--system" => system = true,
            "-f" | "--force" | "-o" | "--non-unique" => {}
            "-g" | "--gid" => {
                gid = Some(number(a, args.get(i + 1))?);
                i += 1;
            }
            "-K" | "--key" => i += 1,
            _ if a.starts_with('-') => return Err(format!("kiln does not know option `{a}`")),
            _ => names.push(a.to_string()),
        }
        i += 1;
    }
    let [name] = names.as_slice() else {
        return Err("expected one group name".into());
    };
    if !system && gid.is_none() {
        return Err("only system groups (`-r`), or groups with a `-g` gid, are read".into());
    }
    Ok(Some(Call::Group {
        name: name.clone(),
        gid,
        tool: Tool::Useradd,
    }))
}

/// The `u`, `g` and `m` lines of a `sysusers.d` file, in the order
/// `systemd-sysusers` applies them (groups, then users, then memberships);
/// `Err(line, why)` for one kiln cannot read.
pub fn sysusers_calls(text: &str) -> std::result::Result<Vec<Call>, (usize, String)> {
    let mut out = sysusers_lines(text)?;
    let rank = |c: &Call| match c {
        Call::Group { .. } => 0,
        Call::User { .. } => 1,
        Call::Member { .. } => 2,
    };
    out.sort_by_key(rank);
    Ok(out)
}

fn sysusers_lines(text: &str) -> std::result::Result<Vec<Call>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f = sysusers_fields(l);
        let get = |i: usize| f.get(i).map(String::as_str).filter(|s| *s != "-");
        let bad = |why: &str| (n + 1, format!("`{l}`: {why}"));
        match f[0].as_str() {
            "u" | "u!" => {
                let name = get(1).ok_or_else(|| bad("no name"))?.to_string();
                let (uid, primary) = match get(2) {
                    None => (None, Primary::Own),
                    Some(id) => {
                        let (u, g) = id.split_once(':').map_or((id, None), |(u, g)| (u, Some(g)));
                        let uid = u.parse().map_err(|_| bad("the id is not a number"))?;
                        let primary = match g {
                            None => Primary::Own,
                            Some(g) => g
                                .parse()
                                .map_or(Primary::Named(g.to_string()), Primary::Gid),
                        };
                        (Some(uid), primary)
                    }
                };
                out.push(Call::User {
                    name,
                    uid,
                    primary,
                    home: get(4).unwrap_or("/").to_string(),
                    create_home: false,
                    shell: get(5).unwrap_or("/usr/sbin/nologin").to_string(),
                    gecos: get(3).unwrap_or("").to_string(),
                    groups: Vec::new(),
                    tool: Tool::Sysusers,
                });
            }
            "g" => out.push(Call::Group {
                name: get(1).ok_or_else(|| bad("no name"))?.to_string(),
                gid: get(2)
                    .map(|g| g.parse().map_err(|_| bad("the id is not a number")))
                    .transpose()?,
                tool: Tool::Sysusers,
            }),
            "m" => out.push(Call::Member {
                user: get(1).ok_or_else(|| bad("no user"))?.to_string(),
                group: get(2).ok_or_else(|| bad("no group"))?.to_string(),
            }),
            "r" => {}
            _ => return Err(bad("kiln reads only `u`, `g`, `m` and `r` lines")),
        }
    }
    Ok(out)
}

/// Whitespace-separated fields, `"…"` quoting one.
fn sysusers_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// An account a call created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The call's index.
    pub call: usize,
    /// A user (else a group).
    pub user: bool,
    /// Its uid or gid.
    pub id: u32,
}

/// A home directory a call makes: its path, owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The absolute path.
    pub path: String,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

fn id_of(text: &str, name: &str, field: usize) -> Option<u32> {
    rows(text)
        .find(|f| f[0] == name)
        .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
}

fn used(text: &str, id: u32) -> bool {
    rows(text).any(|f| f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(id))
}

/// adduser: the first free id from 100 to 999.
fn first_free(text: &str) -> Option<u32> {
    (100..=999).find(|id| !used(text, *id))
}

/// useradd -r: below the lowest id in use from 101 to 999, else the highest free.
fn shadow_free(text: &str) -> Option<u32> {
    let lowest = rows(text)
        .filter_map(|f| f.get(2).and_then(|v| v.parse::<u32>().ok()))
        .filter(|id| (101..=999).contains(id))
        .min();
    if let Some(l) = lowest {
        if l > 101 && !used(text, l - 1) {
            return Some(l - 1);
        }
    }
    (101..=999).rev().find(|id| !used(text, *id))
}

/// systemd-sysusers: the highest free id from 999 down.
fn top_free(text: &str) -> Option<u32> {
    (101..=999).rev().find(|id| !used(text, *id))
}

fn line(file: &mut String, text: &str) {
    if !file.is_empty() && !file.ends_with('\n') {
        file.push('\n');
    }
    file.push_str(text);
    file.push('\n');
}

/// Adds `user` to `group`'s members (and in gshadow); false if the group is missing.
fn add_member(files: &mut AccountFiles, user: &str, group: &str) -> bool {
    let mut found = false;
    for (file, field) in [(&mut files.group, 3usize), (&mut files.gshadow, 3usize)] {
        let Some(text) = file.as_mut() else { continue };
        let mut out = String::new();
        for l in text.lines() {
            let mut f: Vec<String> = l.split(':').map(String::from).collect();
            if f.len() > field && f[0] == group {
                found = true;
                let mut members: Vec<&str> =
                    f[field].split(',').filter(|m| !m.is_empty()).collect();
                if !members.contains(&user) {
                    members.push(user);
                }
                f[field] = members.join(",");
                out.push_str(&f.join(":"));
            } else {
                out.push_str(l);
            }
            out.push('\n');
        }
        *text = out;
    }
    found
}

/// Applies `calls` to `files` in their order (memberships after every
/// account is made); the homes and the accounts created. `Err` names (by
/// index) a call that cannot be applied.
pub fn apply(
    files: &mut AccountFiles,
    calls: &[Call],
) -> Result<(Vec<Home>, Vec<Created>), (usize, String)> {
    let mut homes = Vec::new();
    let mut created = Vec::new();
    // Memberships last, so that a group another package creates is there.
    let member = |c: &Call| matches!(c, Call::Member { .. });
    let order = (calls.iter().enumerate().filter(|(_, c)| !member(c)))
        .chain(calls.iter().enumerate().filter(|(_, c)| member(c)));
    for (at, call) in order {
        let made = apply_one(files, call, &mut homes).map_err(|why| (at, why))?;
        created.extend(made.map(|(user, id)| Created { call: at, user, id }));
    }
    Ok((homes, created))
}

fn apply_one(
    files: &mut AccountFiles,
    call: &Call,
    homes: &mut Vec<Home>,
) -> Result<Option<(bool, u32)>, String> {
    {
        let passwd = files.passwd.get_or_insert_with(String::new).clone();
        let group = files.group.get_or_insert_with(String::new).clone();
        match call {
            Call::Group { name, gid, tool } => {
                if id_of(&group, name, 2).is_some() {
                    return Ok(None);
                }
                let gid = match gid {
                    Some(g) if !used(&group, *g) => *g,
                    Some(g) if *tool == Tool::Adduser => {
                        return Err(format!("gid {g} of group `{name}` is already in use"))
                    }
                    _ => match tool {
                        Tool::Adduser => first_free(&group),
                        Tool::Useradd => shadow_free(&group),
                        Tool::Sysusers => top_free(&group),
                    }
                    .ok_or_else(|| format!("no free gid for group `{name}`"))?,
                };
                new_group(files, name, gid);
                Ok(Some((false, gid)))
            }
            Call::Member { user, group: g } => {
                if !add_member(files, user, g) {
                    return Err(format!(
                        "group `{g}` does not exist when `{user}` is added to it"
                    ));
                }
                Ok(None)
            }
            Call::User {
                name,
                uid,
                primary,
                home,
                create_home,
                shell,
                gecos,
                groups,
                tool,
            } => {
                if id_of(&passwd, name, 2).is_some() {
                    return Ok(None);
                }
                let uid = match uid {
                    Some(u) if used(&passwd, *u) => {
                        return Err(format!("uid {u} of user `{name}` is already in use"))
                    }
                    Some(u) => *u,
                    None => match tool {
                        Tool::Adduser => first_free(&passwd),
                        Tool::Useradd => shadow_free(&passwd),
                        // An id free as a uid and as a gid, from the top.
                        Tool::Sysusers => (101..=999)
                            .rev()
                            .find(|id| !used(&passwd, *id) && !used(&group, *id))
                            .or_else(|| top_free(&passwd)),
                    }
                    .ok_or_else(|| format!("no free uid for user `{name}`"))?,
                };
                let gid = match primary {
                    Primary::Own => match id_of(&group, name, 2) {
                        Some(g) => g,
                        None => {
                            let gid = match (tool, call_uid(call)) {
                                // adduser --uid N --group: gid N.
                                (Tool::Adduser, Some(_)) => uid,
                                (Tool::Adduser, None) => first_free(&group)
                                    .ok_or_else(|| format!("no free gid for `{name}`"))?,
                                _ if !used(&group, uid) => uid,
                                (Tool::Useradd, _) => shadow_free(&group)
                                    .ok_or_else(|| format!("no free gid for `{name}`"))?,
                                _ => top_free(&group)
                                    .ok_or_else(|| format!("no free gid for `{name}`"))?,
                            };
                            new_group(files, name, gid);
                            gid
                        }
                    },
                    Primary::Named(g) => id_of(&group, g, 2)
                        .ok_or_else(|| format!("group `{g}` of user `{name}` does not exist"))?,
                    Primary::Gid(g) => *g,
                    Primary::Nogroup => id_of(&group, "nogroup", 2).unwrap_or(65534),
                };
                let p = files.passwd.get_or_insert_with(String::new);
                line(p, &format!("{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}"));
                if let Some(s) = files.shadow.as_mut() {
                    line(s, &format!("{name}:*:::::::"));
                }
                for g in groups {
                    if !add_member(files, name, g) {
                        return Err(format!("group `{g}` of user `{name}` does not exist"));
                    }
                }
                if *create_home && home.starts_with('/') && home != "/" {
                    homes.push(Home {
                        path: home.clone(),
                        uid,
                        gid,
                    });
                }
                Ok(Some((true, uid)))
            }
        }
    }
}

fn call_uid(call: &Call) -> Option<u32> {
    match call {
        Call::User { uid, .. } => *uid,
        _ => None,
    }
}

fn new_group(files: &mut AccountFiles, name: &str, gid: u32) {
    line(
        files.group.get_or_insert_with(String::new),
        &format!("{name}:x:{gid}:"),
    );
    if let Some(s) = files.gshadow.as_mut() {
        line(s, &format!("{name}:!::"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_postinst_calls() {
        let script = "#!/bin/sh\nset -e\nif ! getent passwd redis >/dev/null; then\n\tadduser --system --home /var/lib/redis --quiet --group redis\nfi\n\
                      adduser --system --quiet --home /var/lib/postgresql --no-create-home \\\n  --shell /bin/bash --group --gecos \"PostgreSQL administrator\" postgres\n\
                      getent group ssl-cert >/dev/null || addgroup --system --quiet ssl-cert\nadduser --quiet postgres ssl-cert\n\
                      useradd -r -s /usr/sbin/nologin -d /var/lib/app app 2>/dev/null || true\n";
        let calls = script_calls(script).unwrap();
        assert_eq!(calls.len(), 5, "{calls:?}");
        assert!(
            matches!(&calls[1], Call::User { name, gecos, shell, create_home: false, .. }
            if name == "postgres" && gecos == "PostgreSQL administrator,,," && shell == "/bin/bash")
        );
        assert!(matches!(&calls[2], Call::Group { name, .. } if name == "ssl-cert"));
        assert!(
            matches!(&calls[3], Call::Member { user, group } if user == "postgres" && group == "ssl-cert")
        );
        assert!(matches!(
            &calls[4],
            Call::User {
                tool: Tool::Useradd,
                ..
            }
        ));
    }

    /// postgresql-common's own `postinst` (bookworm): `$quiet` is only ever `--quiet`.
    #[test]
    fn a_variable_that_only_holds_quiet_is_dropped() {
        let script = "    [ \"$DPKG_MAINTSCRIPT_PACKAGE\" ] && quiet=\"--quiet\" # RedHat doesn't have this\n\
                      if ! getent passwd postgres > /dev/null; then\n\
                      \tadduser --system $quiet --home /var/lib/postgresql --no-create-home \\\n\
                      \t    --shell /bin/bash --group --gecos \"PostgreSQL administrator\" postgres\nfi\n\
                      groupadd -g 42 shadow || true\n";
        let calls = script_calls(script).unwrap();
        assert!(matches!(&calls[0], Call::User { name, .. } if name == "postgres"));
        assert_eq!(
            calls[1],
            Call::Group {
                name: "shadow".into(),
                gid: Some(42),
                tool: Tool::Useradd
            }
        );
        // A variable set to anything else still stops kiln.
        let e = script_calls("opt=--home\n[ x ] && opt=--shell\nadduser --system $opt /x svc\n")
            .unwrap_err();
        assert_eq!(e.line, 3);
    }

    /// dbus-system-bus-common's own `postinst` (bookworm).
    #[test]
    fn a_wrapper_and_a_constant_variable_are_read() {
        let script = "#!/bin/sh\nset -e\n\nMESSAGEUSER=messagebus\n\nin_sysroot () {\n    \
                      if [ -z \"${DPKG_ROOT:-}\" ]; then\n        \"$@\"\n    else\n        \
                      chroot \"${DPKG_ROOT}\" \"$@\"\n    fi\n}\n\nif [ \"$1\" = configure ]; then\n    \
                      in_sysroot adduser --system \\\n            --quiet \\\n            --home /nonexistent \\\n            \
                      --no-create-home \\\n            --disabled-password \\\n            --group \"$MESSAGEUSER\"\nfi\n";
        let calls = script_calls(script).unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert!(
            matches!(&calls[0], Call::User { name, primary: Primary::Own, .. } if name == "messagebus")
        );
        // Two different values: unreadable.
        let e = script_calls("U=a\n[ x ] && U=b\nadduser --system \"$U\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(script_calls("echo adduser --system x\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn here_documents_are_text() {
        let script = "cat <<EOF\nIt's adduser --system ghost\nEOF\nadduser --system real\n\
                      cat <<-'END' >&2\n\tdon't\n\tEND\naddgroup --system g\n";
        let calls = script_calls(script).unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(matches!(&calls[0], Call::User { name, .. } if name == "real"));
        let e = script_calls("cat <<EOF\nx\nEOF\nadduser --system $x y\n").unwrap_err();
        assert_eq!(e.line, 4);
    }

    #[test]
    fn a_variable_is_unreadable_at_its_line() {
        let e = script_calls("#!/bin/sh\n\nadduser --system --home \"$HOME_DIR\" \\\n  svc\n")
            .unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.name.as_deref(), Some("svc"));
        let e = script_calls("adduser --system $(echo x)\n").unwrap_err();
        assert_eq!(e.name, None);
    }

    fn files(passwd: &str, group: &str) -> AccountFiles {
        AccountFiles {
            passwd: Some(passwd.into()),
            group: Some(group.into()),
            shadow: None,
            gshadow: None,
        }
    }

    /// The lines the real `useradd`/`adduser` (bookworm) wrote over the
    /// same files (see `tests/it/sysusers.rs` for a test that runs them).
    #[test]
    fn ids_follow_adduser_and_useradd() {
        let mut f = files(
            "root:x:0:0::/root:/bin/sh\nx:x:500:500::/:/bin/sh\ny:x:999:999::/:/bin/sh\n",
            "root:x:0:\nx:x:500:\nnogroup:x:65534:\n",
        );
        let calls = script_calls(
            "useradd -r a\nuseradd -r b\ngroupadd -r g\nuseradd -r -g x c\nuseradd -r -u 300 d\n\
             adduser --system e\nadduser --system --uid 700 --group f\n\
             adduser --system --ingroup x --gecos 'A,B' h\n",
        )
        .unwrap();
        let (homes, created) = apply(&mut f, &calls).unwrap();
        assert_eq!(
            f.passwd.unwrap(),
            "root:x:0:0::/root:/bin/sh\nx:x:500:500::/:/bin/sh\ny:x:999:999::/:/bin/sh\n\
             a:x:499:499::/home/a:/bin/sh\nb:x:498:498::/home/b:/bin/sh\nc:x:497:500::/home/c:/bin/sh\n\
             d:x:300:300::/home/d:/bin/sh\ne:x:100:65534::/nonexistent:/usr/sbin/nologin\n\
             f:x:700:700::/nonexistent:/usr/sbin/nologin\nh:x:101:500:A,B,,:/nonexistent:/usr/sbin/nologin\n"
        );
        assert_eq!(
            f.group.unwrap(),
            "root:x:0:\nx:x:500:\nnogroup:x:65534:\na:x:499:\nb:x:498:\ng:x:497:\nd:x:300:\nf:x:700:\n"
        );
        assert!(homes.is_empty());
        let ids: Vec<(bool, u32)> = created.iter().map(|c| (c.user, c.id)).collect();
        assert_eq!(
            ids,
            [
                (true, 499),
                (true, 498),
                (false, 497),
                (true, 497),
                (true, 300),
                (true, 100),
                (true, 700),
                (true, 101)
            ]
        );
    }

    #[test]
    fn reads_sysusers_lines() {
        let calls = sysusers_calls(
            "# comment\ng sysgrp -\nu sysu - \"Sys user\" /var/lib/sysu\nm sysu sysgrp\nr - 500-900\n",
        )
        .unwrap();
        let mut f = files("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
        apply(&mut f, &calls).unwrap();
        // What `systemd-sysusers --root` wrote over the same files.
        assert_eq!(
            f.passwd.as_deref().unwrap(),
            "root:x:0:0::/root:/bin/sh\nsysu:x:998:998:Sys user:/var/lib/sysu:/usr/sbin/nologin\n"
        );
        assert_eq!(
            f.group.as_deref().unwrap(),
            "root:x:0:\nsysgrp:x:999:sysu\nsysu:x:998:\n"
        );
        let calls = sysusers_calls("u a -\nu b 300\nu c 400:sysgrp\ng d 310\n").unwrap();
        apply(&mut f, &calls).unwrap();
        assert_eq!(
            f.passwd.unwrap(),
            "root:x:0:0::/root:/bin/sh\nsysu:x:998:998:Sys user:/var/lib/sysu:/usr/sbin/nologin\n\
             a:x:997:997::/:/usr/sbin/nologin\nb:x:300:300::/:/usr/sbin/nologin\nc:x:400:999::/:/usr/sbin/nologin\n"
        );
        assert_eq!(
            f.group.unwrap(),
            "root:x:0:\nsysgrp:x:999:sysu\nsysu:x:998:\nd:x:310:\na:x:997:\nb:x:300:\n"
        );
        assert!(sysusers_calls("x foo\n").is_err());
    }
}
