// Package certfile serves a TLS certificate and key kept in two files that are replaced
// while regcache runs (cert-manager's Secret volumes, ACME clients): each new connection's
// handshake gets the pair on disk now, without a restart, while connections already open
// keep the certificate they were made with (TLS 1.2+ never renegotiates on the server's
// side here). A pair that is bad when it changes (unreadable, not PEM, or a cert and a key
// that do not match because one was written before the other) is logged and the pair
// served so far is kept, until the files change again.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// FileError is a pair that cannot be used, blaming one of its files: Which is "cert" or
// "key" (configs turns it into tls.cert_file or tls.key_file).
type FileError struct {
	Which string
	Err   error
}

func (e *FileError) Error() string { return e.Which + " file: " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// ReadPair reads and parses the certificate chain in certFile and the private key in
// keyFile, and checks that they belong together. Errors are *FileError and never quote
// the key.
func ReadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := readPEM(certFile)
	if err != nil {
		return nil, &FileError{"cert", err}
	}
	keyPEM, err := readPEM(keyFile)
	if err != nil {
		return nil, &FileError{"key", err}
	}
	return parsePair(certFile, keyFile, certPEM, keyPEM)
}

// maxPEM bounds a file read: a chain of a few certificates is a few KiB, and a path
// mistyped to a log or a device must not be read whole.
const maxPEM = 1 << 20

// readPEM reads a regular file of at most maxPEM bytes (stat'ed first: opening a FIFO
// would block).
func readPEM(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, maxPEM+1))
	if err == nil && len(b) > maxPEM {
		err = fmt.Errorf("%s: larger than %d bytes: not a PEM certificate or key", path, maxPEM)
	}
	return b, err
}

func parsePair(certFile, keyFile string, certPEM, keyPEM []byte) (*tls.Certificate, error) {
	// X509KeyPair's errors do not say which file is wrong: the certificate is checked on
	// its own first, so that what remains is the key's.
	leaf, err := firstCertificate(certPEM)
	if err != nil {
		return nil, &FileError{"cert", fmt.Errorf("%s: %v", certFile, err)}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "tls: ") // never quotes the key, only what the file held
		if strings.Contains(msg, "does not match") {
			msg = "the key does not match the certificate in " + certFile
		}
		return nil, &FileError{"key", fmt.Errorf("%s: %s", keyFile, msg)}
	}
	pair.Leaf = leaf
	return &pair, nil
}

// firstCertificate parses the first CERTIFICATE block of a PEM chain: the leaf served.
func firstCertificate(certPEM []byte) (*x509.Certificate, error) {
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, errors.New("no PEM CERTIFICATE block (want the server certificate, then any intermediates)")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// stamp tells whether a file changed: the file a path leads to now (symlinks followed, as
// cert-manager swaps a ..data link), its size, its modification time and its change time
// (a chmod or chown after the write, say by a deploy hook, makes an unreadable key
// readable without touching its contents).
type stamp struct {
	dev, ino uint64
	size     int64
	mtime    int64  // UnixNano: comparable with ==, unlike a time.Time's location
	ctime    int64  // UnixNano of the inode's last change
	err      string // a file that cannot be stat'ed is a state too: its return is a change
}

func stampOf(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{err: err.Error()}
	}
	s := stamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino, s.ctime = uint64(st.Dev), st.Ino, changeTime(st) //nolint:unconvert // Dev's type differs by platform
	}
	return s
}

// Reloader holds the pair to serve. Its zero value is not ready: use Load.
type Reloader struct {
	certFile, keyFile string
	log               *zap.Logger
	current           atomic.Pointer[tls.Certificate]
	// seen is the files' stamps when last read (whether the pair was good or not): a
	// handshake reads the files again only when they differ.
	seen atomic.Pointer[[2]stamp]
	mu   sync.Mutex // one reload at a time
	// Reloads and Failures count the reloads that took a new pair and those that kept the
	// old one (for tests and the log).
	reloads, failures atomic.Int64
}

// Load reads the pair once (an error is the start's refusal) and logs what it serves.
func Load(certFile, keyFile string, log *zap.Logger) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log}
	st := r.stamps()
	pair, err := ReadPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.current.Store(pair)
	r.seen.Store(&st)
	log.Info("tls certificate loaded", describe(pair, certFile)...)
	return r, nil
}

func (r *Reloader) stamps() [2]stamp { return [2]stamp{stampOf(r.certFile), stampOf(r.keyFile)} }

// GetCertificate is tls.Config's: the pair on disk now. Two stats per handshake decide
// whether the files changed, far below the handshake's own cost; the files are read
// again only when they did.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.Check()
	return r.current.Load(), nil
}

// Check reloads the pair if either file changed since it was last read. A bad pair is
// logged once per change and the old one kept.
func (r *Reloader) Check() {
	if st := r.stamps(); st == *r.seen.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stamps() // taken before reading: a write after it is seen by the next Check
	if st == *r.seen.Load() {
		return // another handshake reloaded meanwhile
	}
	r.seen.Store(&st)
	pair, err := ReadPair(r.certFile, r.keyFile)
	if err != nil {
		r.failures.Add(1)
		old := r.current.Load()
		// A warning: a renewal written in place passes through such states (the new
		// certificate beside the old key) on its way to a good pair.
		r.log.Warn("tls certificate files changed but cannot be used; still serving the previous certificate",
			zap.Error(err), zap.String("serving_subject", old.Leaf.Subject.String()), zap.Time("serving_not_after", old.Leaf.NotAfter))
		return
	}
	r.current.Store(pair)
	r.reloads.Add(1)
	r.log.Info("tls certificate reloaded", describe(pair, r.certFile)...)
}

// Reloads is how many times a changed pair was taken; Failures how many changed pairs were
// refused.
func (r *Reloader) Reloads() int64  { return r.reloads.Load() }
func (r *Reloader) Failures() int64 { return r.failures.Load() }

// Config is the listener's TLS configuration: TLS 1.2 and up, HTTP/1.1 only (fasthttp
// speaks nothing else, so ALPN must not offer h2), the certificate from r.
func (r *Reloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: r.GetCertificate,
	}
}

// describe is what the log says of a pair: the leaf's subject, names, issuer, serial and
// validity, never the key.
func describe(pair *tls.Certificate, certFile string) []zap.Field {
	l := pair.Leaf
	names := append([]string(nil), l.DNSNames...)
	for _, ip := range l.IPAddresses {
		names = append(names, ip.String())
	}
	fields := []zap.Field{
		zap.String("cert_file", certFile), zap.String("subject", l.Subject.String()), zap.Strings("names", names),
		zap.String("issuer", l.Issuer.String()), zap.String("serial", l.SerialNumber.Text(16)),
		zap.Time("not_before", l.NotBefore), zap.Time("not_after", l.NotAfter),
	}
	if now := time.Now(); now.After(l.NotAfter) || now.Before(l.NotBefore) {
		fields = append(fields, zap.Error(errors.New("the certificate is not valid now: clients will refuse it")))
	}
	return fields
}
