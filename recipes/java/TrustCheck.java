import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

/**
 * Opens the JVM's default HTTPS trust store (lib/security/cacerts, which
 * Debian links to /etc/ssl/certs/java/cacerts) the way an HTTPS client does,
 * and prints how many certificate authorities it trusts. Compiled with
 * `javac --release 17 TrustCheck.java` into TrustCheck.class beside it.
 */
public class TrustCheck {
    public static void main(String[] args) throws Exception {
        TrustManagerFactory tmf =
                TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init((KeyStore) null);
        int issuers = 0;
        boolean isrg = false;
        for (TrustManager tm : tmf.getTrustManagers()) {
            if (tm instanceof X509TrustManager) {
                for (X509Certificate c : ((X509TrustManager) tm).getAcceptedIssuers()) {
                    issuers++;
                    isrg |= c.getSubjectX500Principal().getName().contains("ISRG Root X1");
                }
            }
        }
        System.out.println("java " + System.getProperty("java.version")
                + " user " + System.getProperty("user.name")
                + " trusted issuers " + issuers
                + " isrg-root-x1 " + isrg);
        if (issuers == 0) {
            System.exit(1);
        }
    }
}
