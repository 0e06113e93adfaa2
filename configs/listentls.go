package configs

import (
	"errors"
	"fmt"
	"strings"

	"regcache/internal/certfile"
)

// ListenTLS serves listen over HTTPS (HTTP/1.1, TLS 1.2 and up) with the certificate and
// key in these files; regcache re-reads them on the next handshake after either changes.
type ListenTLS struct {
	// CertFile is the server certificate, then any intermediates, in PEM.
	CertFile string `yaml:"cert_file"`
	// KeyFile is its private key in PEM.
	KeyFile string `yaml:"key_file"`
}

// validate refuses a pair that is not there or not usable now, naming the key at fault:
// at start, a bad pair is an error (at a reload, regcache keeps serving the previous one).
func (t *ListenTLS) validate() error {
	if t.CertFile == "" {
		return errors.New("tls.cert_file: must be set with tls (the server certificate, PEM)")
	}
	if t.KeyFile == "" {
		return errors.New("tls.key_file: must be set with tls (the certificate's private key, PEM)")
	}
	if _, err := certfile.ReadPair(t.CertFile, t.KeyFile); err != nil {
		var fe *certfile.FileError
		if errors.As(err, &fe) {
			return fmt.Errorf("tls.%s_file: %v", fe.Which, fe.Err)
		}
		return fmt.Errorf("tls: %v", err)
	}
	return nil
}

// tlsWarnings are the warnings of a tls: block: a public_url that sends clients to plain
// http for their tokens while the listener speaks only TLS.
func (c *Config) tlsWarnings() []string {
	if c.TLS != nil && strings.HasPrefix(strings.ToLower(c.PublicURL), "http://") {
		return []string{"public_url is http:// but tls is set: clients are sent to a plain-http token realm that this listener does not serve"}
	}
	return nil
}
