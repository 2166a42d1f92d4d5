//! `[accounts]` merged into the account files of the layers below: what
//! `adduser --system` and `groupadd` in maintainer scripts would have done,
//! as data. The files below are never replaced: their lines are kept as they
//! are, in their order, and the recipe's new users and groups are appended in
//! id order. A user or group that is already there with the same ids is left
//! alone (its members extended); a name or id already taken otherwise is an
//! error at the recipe's line.

use std::collections::BTreeMap;

use crate::error::{Result, Source};
use crate::recipe::AccountsSection;

/// The account files of the layers below, where they exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountFiles {
    /// `/etc/passwd`.
    pub passwd: Option<String>,
    /// `/etc/group`.
    pub group: Option<String>,
    /// `/etc/shadow`.
    pub shadow: Option<String>,
    /// `/etc/gshadow`.
    pub gshadow: Option<String>,
}

impl AccountFiles {
    /// Whether `/etc/passwd` names the user `name`.
    pub fn has_user(&self, name: &str) -> bool {
        field_rows(self.passwd.as_deref()).any(|f| f[0] == name)
    }

    /// Whether `/etc/group` names the group `name`.
    pub fn has_group(&self, name: &str) -> bool {
        field_rows(self.group.as_deref()).any(|f| f[0] == name)
    }
}

/// The rows of an account file, split at `:` (comments and blank lines skipped).
fn field_rows(text: Option<&str>) -> impl Iterator<Item = Vec<&str>> {
    text.unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

/// `below` with `accounts` merged in; `source` is the recipe, for errors.
/// `/etc/passwd` and `/etc/group` are written even where none was below;
/// the shadow files only where they were.
pub fn merge(
    source: &Source,
    accounts: &AccountsSection,
    below: &AccountFiles,
) -> Result<AccountFiles> {
    let mut passwd = below.passwd.clone().unwrap_or_default();
    let mut shadow = below.shadow.clone();
    let mut new_users = BTreeMap::new();
    for u in &accounts.users {
        let span = u.span();
        let u = u.get_ref();
        let mut present = false;
        for f in field_rows(below.passwd.as_deref()) {
            let (uid, gid) = (f.get(2).copied(), f.get(3).copied());
            let same_ids = uid == Some(&u.uid.to_string()) && gid == Some(&u.gid.to_string());
            if f[0] == u.name && same_ids {
                present = true;
            } else if f[0] == u.name || uid == Some(&u.uid.to_string()) {
                return Err(source
                    .error(
                        span,
                        format!(
                            "user `{}` (uid {}, gid {}) conflicts with `{}` in the `/etc/passwd` below",
                            u.name,
                            u.uid,
                            u.gid,
                            f.join(":")
                        ),
                    )
                    .hint("pick a name and a uid that the layers below do not use, or match the entry that is there")
                    .into());
            }
        }
        if !present {
            new_users.insert(u.uid, u);
        }
    }
    for u in new_users.values() {
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.as_deref().unwrap_or("/usr/sbin/nologin");
        line(
            &mut passwd,
            &format!("{}:x:{}:{}::{home}:{shell}", u.name, u.uid, u.gid),
        );
        if let Some(s) = shadow.as_mut() {
            if !field_rows(Some(s)).any(|f| f[0] == u.name) {
                line(s, &format!("{}:*:::::::", u.name));
            }
        }
    }

    let mut group: Vec<String> = below
        .group
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    let mut gshadow = below.gshadow.clone();
    let mut new_groups = BTreeMap::new();
    for g in &accounts.groups {
        let span = g.span();
        let g = g.get_ref();
        let mut present = false;
        for row in group.iter_mut() {
            let f: Vec<&str> = row.split(':').collect();
            if row.trim().is_empty() || row.starts_with('#') || f.len() < 3 {
                continue;
            }
            let same_gid = f[2] == g.gid.to_string();
            if f[0] == g.name && same_gid {
                present = true;
                let mut members: Vec<String> = f
                    .get(3)
                    .unwrap_or(&"")
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect();
                for m in &g.members {
                    if !members.contains(m) {
                        members.push(m.clone());
                    }
                }
                *row = format!("{}:{}:{}:{}", f[0], f[1], f[2], members.join(","));
                break;
            } else if f[0] == g.name || same_gid {
                return Err(source
                    .error(
                        span,
                        format!(
                            "group `{}` (gid {}) conflicts with `{row}` in the `/etc/group` below",
                            g.name, g.gid
                        ),
                    )
                    .hint("pick a name and a gid that the layers below do not use, or match the entry that is there")
                    .into());
            }
        }
        if !present {
            new_groups.insert(g.gid, g);
        }
    }
    let mut group = if group.is_empty() {
        String::new()
    } else {
        group.join("\n") + "\n"
    };
    for g in new_groups.values() {
        let members = g.members.join(",");
        line(&mut group, &format!("{}:x:{}:{members}", g.name, g.gid));
        if let Some(s) = gshadow.as_mut() {
            if !field_rows(Some(s)).any(|f| f[0] == g.name) {
                line(s, &format!("{}:!::{members}", g.name));
            }
        }
    }
    Ok(AccountFiles {
        passwd: Some(passwd),
        group: Some(group),
        shadow,
        gshadow,
    })
}

/// Appends `text` as a line, after a newline if the file lacks its last one.
fn line(file: &mut String, text: &str) {
    if !file.is_empty() && !file.ends_with('\n') {
        file.push('\n');
    }
    file.push_str(text);
    file.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn recipe(accounts: &str) -> crate::recipe::Recipe {
        crate::recipe::Recipe::parse(
            Path::new("r.toml"),
            format!("name = \"r\"\n[accounts]\n{accounts}"),
        )
        .unwrap()
    }

    fn below() -> AccountFiles {
        AccountFiles {
            passwd: Some("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n".into()),
            group: Some("root:x:0:\nwww-data:x:33:\n".into()),
            shadow: Some("root:*:19000:0:99999:7:::".into()),
            gshadow: None,
        }
    }

    #[test]
    fn appends_in_id_order_and_keeps_what_is_below() {
        let r = recipe(
            "users = [{ name = \"b\", uid = 1001, gid = 1001 }, { name = \"a\", uid = 1000, gid = 1000, home = \"/srv\", shell = \"/bin/sh\" }, { name = \"www-data\", uid = 33, gid = 33 }]\n\
             groups = [{ name = \"app\", gid = 1000, members = [\"b\"] }, { name = \"www-data\", gid = 33, members = [\"a\"] }]\n",
        );
        let m = merge(&r.source, r.accounts.as_ref().unwrap(), &below()).unwrap();
        assert_eq!(
            m.passwd.unwrap(),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
             a:x:1000:1000::/srv:/bin/sh\nb:x:1001:1001::/home/b:/usr/sbin/nologin\n"
        );
        assert_eq!(
            m.group.unwrap(),
            "root:x:0:\nwww-data:x:33:a\napp:x:1000:b\n"
        );
        assert_eq!(
            m.shadow.unwrap(),
            "root:*:19000:0:99999:7:::\na:*:::::::\nb:*:::::::\n"
        );
        assert_eq!(m.gshadow, None);
    }

    #[test]
    fn a_taken_uid_is_an_error_at_the_recipe_line() {
        let r = recipe("users = [{ name = \"web\", uid = 33, gid = 33 }]\n");
        let e = merge(&r.source, r.accounts.as_ref().unwrap(), &below()).unwrap_err();
        let shown = format!("{e}");
        assert!(shown.contains("r.toml:3:"), "{shown}");
        assert!(shown.contains("www-data:x:33:33"), "{shown}");
    }
}
