package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"regcache/internal/testca"
)

func TestParseListenTLS(t *testing.T) {
	ca := testca.New(t, "CA")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM := ca.Issue(t, "127.0.0.1")
	_, otherKeyPEM := ca.Issue(t, "127.0.0.1")
	cert, key := write("tls.crt", certPEM), write("tls.key", keyPEM)
	otherKey := write("other.key", otherKeyPEM)
	garbage := write("garbage.pem", []byte("hello\n"))
	missing := filepath.Join(dir, "missing.pem")
	block := func(lines string) string { return minimalUpstream + "tls:\n" + lines }

	cfg := mustParse(t, block("  cert_file: "+cert+"\n  key_file: "+key+"\n"))
	if cfg.TLS == nil || cfg.TLS.CertFile != cert || cfg.TLS.KeyFile != key {
		t.Fatalf("tls: %+v", cfg.TLS)
	}
	if mustParse(t, minimalUpstream).TLS != nil {
		t.Error("no tls: block, yet TLS is set")
	}

	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"unknown key", block("  cert_file: " + cert + "\n  key_file: " + key + "\n  certfile: x\n"),
			[]string{"tls.certfile: unknown key", "cert_file, key_file"}},
		{"no cert_file", block("  key_file: " + key + "\n"), []string{"tls.cert_file: must be set"}},
		{"no key_file", block("  cert_file: " + cert + "\n"), []string{"tls.key_file: must be set"}},
		{"empty mapping", "tls: {}\n" + minimalUpstream, []string{"tls.cert_file: must be set"}},
		{"cert file missing", block("  cert_file: " + missing + "\n  key_file: " + key + "\n"),
			[]string{"tls.cert_file:", missing, "no such file"}},
		{"key file missing", block("  cert_file: " + cert + "\n  key_file: " + missing + "\n"),
			[]string{"tls.key_file:", missing, "no such file"}},
		{"cert not PEM", block("  cert_file: " + garbage + "\n  key_file: " + key + "\n"),
			[]string{"tls.cert_file:", garbage, "no PEM CERTIFICATE block"}},
		{"key not PEM", block("  cert_file: " + cert + "\n  key_file: " + garbage + "\n"),
			[]string{"tls.key_file:", garbage}},
		{"files swapped", block("  cert_file: " + key + "\n  key_file: " + cert + "\n"),
			[]string{"tls.cert_file:", "no PEM CERTIFICATE block"}},
		{"mismatched pair", block("  cert_file: " + cert + "\n  key_file: " + otherKey + "\n"),
			[]string{"tls.key_file:", otherKey, "does not match the certificate in " + cert}},
		{"a scalar", "tls: true\n" + minimalUpstream, []string{"tls: expected a mapping of keys"}},
		// Its keys commented out: refused, not plain HTTP in silence.
		{"no value", "tls:\n  # cert_file: /etc/regcache/tls.crt\n" + minimalUpstream, []string{"tls: has no value", "remove tls: to serve plain HTTP"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.text))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), strings.Split(string(otherKeyPEM), "\n")[1]) {
				t.Errorf("error shows the key: %v", err)
			}
		})
	}

	w := mustParse(t, block("  cert_file: "+cert+"\n  key_file: "+key+"\n")+"public_url: http://regcache.example\n").Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "public_url is http:// but tls is set") {
		t.Errorf("warnings %q", w)
	}
	if w := mustParse(t, block("  cert_file: "+cert+"\n  key_file: "+key+"\n")+"public_url: https://regcache.example\n").Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
}
