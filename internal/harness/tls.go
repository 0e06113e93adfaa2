package harness

// regcache over HTTPS: a test CA, a certificate for 127.0.0.1 signed by it in files that
// the config's tls: block names, and what clients need to trust it (a CA file for the
// CLIs and Node, a directory holding ca.crt for skopeo and Docker), with no "insecure"
// setting anywhere.

import (
	"os"
	"path/filepath"
	"testing"

	"regcache/internal/testca"
)

// TLS is a server certificate for 127.0.0.1 and localhost, signed by CA, in CertFile and
// KeyFile. Options.TLS serves regcache with it: Start adds Block to the config, makes
// Instance.URL https:// and Instance.Client trust CA.
type TLS struct {
	CA *testca.CA
	// CAFile is CA's certificate (PEM): SSL_CERT_FILE for Go CLIs (crane, regctl),
	// NODE_EXTRA_CA_CERTS for Node (Renovate).
	CAFile string
	// CertDir holds CAFile as ca.crt: skopeo's --cert-dir, Docker's certs.d/<host:port>.
	CertDir string
	// CertFile and KeyFile are the pair regcache serves (PEM); Serial is its certificate's
	// serial number (decimal), as the client sees it.
	CertFile, KeyFile, Serial string
}

// NewTLS makes a test CA and a pair for 127.0.0.1 and localhost signed by it, in the
// test's temporary directory.
func NewTLS(t testing.TB) *TLS {
	t.Helper()
	ca := testca.New(t, "regcache test CA")
	dir := t.TempDir()
	x := &TLS{CA: ca, CAFile: ca.File, CertDir: filepath.Join(dir, "certs.d"),
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	if err := os.Mkdir(x.CertDir, 0o700); err != nil {
		t.Fatal(err)
	}
	testca.Write(t, filepath.Join(x.CertDir, "ca.crt"), ca.PEM)
	x.Renew(t, ca)
	return x
}

// Block is the tls: block serving the pair, to append to a Config.
func (x *TLS) Block() string {
	return Block("tls", "cert_file: "+x.CertFile, "key_file: "+x.KeyFile)
}

// Renew replaces the pair on disk with a new key and certificate signed by ca (another CA,
// or x.CA), the key first, then the certificate, each renamed into place as cert-manager
// and ACME clients write them, and returns the new serial. Instance.Client trusts x.CA
// only: a test that renews from another CA makes its own client.
func (x *TLS) Renew(t testing.TB, ca *testca.CA) string {
	t.Helper()
	certPEM, keyPEM := ca.Issue(t, "127.0.0.1", "localhost")
	testca.Write(t, x.KeyFile, keyPEM)
	testca.Write(t, x.CertFile, certPEM)
	x.Serial = testca.Leaf(t, certPEM).SerialNumber.String()
	return x.Serial
}
