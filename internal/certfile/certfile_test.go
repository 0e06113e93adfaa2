package certfile_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"regcache/internal/certfile"
	"regcache/internal/testca"
)

// pairFiles writes a pair from ca for 127.0.0.1 into dir and returns the paths.
func pairFiles(t testing.TB, ca *testca.CA, dir string) (certFile, keyFile string, serial string) {
	t.Helper()
	certPEM, keyPEM := ca.Issue(t, "127.0.0.1", "localhost")
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	testca.Write(t, certFile, certPEM)
	testca.Write(t, keyFile, keyPEM)
	return certFile, keyFile, testca.Leaf(t, certPEM).SerialNumber.String()
}

// echoServer serves r's pair on 127.0.0.1, echoing each line a connection sends.
func echoServer(t testing.TB, r *certfile.Reloader) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	tln := tls.NewListener(ln, r.Config())
	go func() {
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// conn is a client connection that trusts roots, with the serial of the certificate it got.
type conn struct {
	*tls.Conn
	serial string
	lines  *bufio.Reader
}

func dial(t *testing.T, addr string, roots *x509.CertPool) *conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	st := c.ConnectionState()
	if st.Version < tls.VersionTLS12 || st.NegotiatedProtocol != "" && st.NegotiatedProtocol != "http/1.1" {
		t.Errorf("version %x, ALPN %q", st.Version, st.NegotiatedProtocol)
	}
	return &conn{Conn: c, serial: st.PeerCertificates[0].SerialNumber.String(), lines: bufio.NewReader(c)}
}

// echo proves the connection still carries data both ways.
func (c *conn) echo(t *testing.T, line string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("write on the open connection: %v", err)
	}
	got, err := c.lines.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo on the open connection: %q, %v", got, err)
	}
}

func start(t *testing.T, certFile, keyFile string) (*certfile.Reloader, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	r, err := certfile.Load(certFile, keyFile, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	return r, logs
}

// fixture is a pair from ca in dir, served by r on addr.
type fixture struct {
	ca                                   *testca.CA
	dir, certFile, keyFile, serial, addr string
	r                                    *certfile.Reloader
	logs                                 *observer.ObservedLogs
}

// serve writes a pair from a new CA and serves it with a Reloader.
func serve(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{ca: testca.New(t, "first CA"), dir: t.TempDir()}
	f.certFile, f.keyFile, f.serial = pairFiles(t, f.ca, f.dir)
	f.r, f.logs = start(t, f.certFile, f.keyFile)
	f.addr = echoServer(t, f.r)
	return f
}

func TestReplacedPairServedToNextConnectionOpenOneKept(t *testing.T) {
	f := serve(t)
	ca1, ca2, dir, serial1, r, logs, addr := f.ca, testca.New(t, "second CA"), f.dir, f.serial, f.r, f.logs, f.addr

	old := dial(t, addr, ca1.Pool())
	if old.serial != serial1 {
		t.Fatalf("served serial %s, want %s", old.serial, serial1)
	}
	old.echo(t, "before")

	_, _, serial2 := pairFiles(t, ca2, dir) // a renewal from another CA: new key, new serial
	next := dial(t, addr, ca2.Pool())
	if next.serial != serial2 {
		t.Fatalf("next connection after the replacement got serial %s, want the new %s", next.serial, serial2)
	}
	old.echo(t, "after") // the connection opened before is not dropped
	if old.ConnectionState().PeerCertificates[0].SerialNumber.String() != serial1 {
		t.Error("the open connection's certificate changed")
	}
	if r.Reloads() != 1 || r.Failures() != 0 {
		t.Errorf("reloads %d failures %d, want 1 and 0", r.Reloads(), r.Failures())
	}
	if n := logs.FilterMessage("tls certificate reloaded").Len(); n != 1 {
		t.Errorf("%d reload lines, want 1", n)
	}
	// The old CA no longer verifies new connections.
	if c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca1.Pool(), ServerName: "127.0.0.1"}); err == nil {
		_ = c.Close()
		t.Error("a client trusting only the first CA still verified a new connection")
	}
}

func TestBadPairAtReloadKeepsOld(t *testing.T) {
	f := serve(t)
	ca, dir, certFile, keyFile, serial1, r, logs, addr := f.ca, f.dir, f.certFile, f.keyFile, f.serial, f.r, f.logs, f.addr
	open := dial(t, addr, ca.Pool())

	testca.Write(t, certFile, []byte("not a certificate\n"))
	for range 3 { // logged once for the change, not per handshake
		if c := dial(t, addr, ca.Pool()); c.serial != serial1 {
			t.Fatalf("a bad cert file on disk: served serial %s, want the old %s", c.serial, serial1)
		}
	}
	if r.Failures() != 1 {
		t.Errorf("failures %d, want 1", r.Failures())
	}
	bad := logs.FilterMessageSnippet("cannot be used").All()
	if len(bad) != 1 || !strings.Contains(bad[0].ContextMap()["error"].(string), "cert file") {
		t.Fatalf("log lines for the bad pair: %+v", bad)
	}
	open.echo(t, "still here")

	// A removed key file is bad too; its return, with a new pair, is served.
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if c := dial(t, addr, ca.Pool()); c.serial != serial1 {
		t.Fatalf("a missing key file: served serial %s, want the old %s", c.serial, serial1)
	}
	_, _, serial2 := pairFiles(t, ca, dir)
	if c := dial(t, addr, ca.Pool()); c.serial != serial2 {
		t.Fatalf("after a good pair returned: served serial %s, want %s", c.serial, serial2)
	}
	if r.Failures() != 2 || r.Reloads() != 1 {
		t.Errorf("failures %d reloads %d, want 2 and 1", r.Failures(), r.Reloads())
	}
}

func TestHalfWrittenPairNotServed(t *testing.T) {
	f := serve(t)
	ca, certFile, keyFile, serial1, r, logs, addr := f.ca, f.certFile, f.keyFile, f.serial, f.r, f.logs, f.addr

	certPEM, keyPEM := ca.Issue(t, "127.0.0.1")
	testca.Write(t, certFile, certPEM) // the renewal wrote the cert; the key is still the old one
	c := dial(t, addr, ca.Pool())
	if c.serial != serial1 {
		t.Fatalf("new cert with the old key: served serial %s, want the old %s", c.serial, serial1)
	}
	bad := logs.FilterMessageSnippet("cannot be used").All()
	if len(bad) != 1 || !strings.Contains(bad[0].ContextMap()["error"].(string), "key does not match the certificate") {
		t.Fatalf("log lines for the half-written pair: %+v", bad)
	}
	testca.Write(t, keyFile, keyPEM) // now the key
	if c := dial(t, addr, ca.Pool()); c.serial != testca.Leaf(t, certPEM).SerialNumber.String() {
		t.Fatalf("whole new pair: served serial %s, want the new one", c.serial)
	}
	if r.Reloads() != 1 {
		t.Errorf("reloads %d, want 1", r.Reloads())
	}
}

// cert-manager's Secret volume: tls.crt and tls.key are links into ..data, a link to a
// timestamped directory that an update replaces whole by swapping the link.
func TestSymlinkSwapLikeSecretVolume(t *testing.T) {
	ca := testca.New(t, "CA")
	vol := t.TempDir()
	_, _, serial1 := pairFiles(t, ca, mkdir(t, vol, "..2026_01"))
	link(t, "..2026_01", filepath.Join(vol, "..data"))
	link(t, "..data/tls.crt", filepath.Join(vol, "tls.crt"))
	link(t, "..data/tls.key", filepath.Join(vol, "tls.key"))
	r, _ := start(t, filepath.Join(vol, "tls.crt"), filepath.Join(vol, "tls.key"))
	addr := echoServer(t, r)
	if c := dial(t, addr, ca.Pool()); c.serial != serial1 {
		t.Fatalf("served %s, want %s", c.serial, serial1)
	}

	_, _, serial2 := pairFiles(t, ca, mkdir(t, vol, "..2026_02"))
	link(t, "..2026_02", filepath.Join(vol, "..data_tmp"))
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if c := dial(t, addr, ca.Pool()); c.serial != serial2 {
		t.Fatalf("after the ..data swap: served %s, want %s", c.serial, serial2)
	}
}

func mkdir(t *testing.T, parent, name string) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func link(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

func TestOnlyTLS12AndUp(t *testing.T) {
	f := serve(t)
	ca, addr := f.ca, f.addr
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS11})
	if err == nil {
		_ = c.Close()
		t.Fatal("a TLS 1.1 client completed a handshake")
	}
	c2, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS 1.2: %v", err)
	}
	defer func() { _ = c2.Close() }()
	if p := c2.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("ALPN offered h2 and http/1.1: got %q, want http/1.1 (fasthttp has no HTTP/2)", p)
	}
}

func TestReadPairNamesTheFileAtFault(t *testing.T) {
	ca := testca.New(t, "CA")
	dir := t.TempDir()
	certFile, keyFile, _ := pairFiles(t, ca, dir)
	otherCert, otherKey, _ := pairFiles(t, ca, mkdir(t, dir, "other"))
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name, cert, key, which, want string
	}{
		{"missing cert", missing, keyFile, "cert", "no such file"},
		{"missing key", certFile, missing, "key", "no such file"},
		{"cert a directory", dir, keyFile, "cert", "not a regular file"},
		{"key a device", certFile, os.DevNull, "key", "not a regular file"},
		{"cert not PEM", garbage, keyFile, "cert", "no PEM CERTIFICATE block"},
		{"cert is the key", keyFile, keyFile, "cert", "no PEM CERTIFICATE block"},
		{"key not PEM", certFile, garbage, "key", "key"},
		{"key is a cert", certFile, otherCert, "key", "certificate rather than a key"},
		{"mismatched pair", certFile, otherKey, "key", "the key does not match the certificate in " + certFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certfile.ReadPair(tc.cert, tc.key)
			var fe *certfile.FileError
			if !errors.As(err, &fe) || fe.Which != tc.which || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a %s file error with %q", err, tc.which, tc.want)
			}
			if strings.Contains(err.Error(), strings.Split(string(keyPEM), "\n")[1]) {
				t.Fatalf("the error quotes the key: %v", err)
			}
		})
	}
	if _, err := certfile.Load(certFile, otherKey, zap.NewNop()); err == nil {
		t.Error("Load took a mismatched pair")
	}
}

// BenchmarkGetCertificate is what each handshake adds for the reload check (two stats of
// unchanged files), to set against BenchmarkHandshake, the handshake itself.
func BenchmarkGetCertificate(b *testing.B) {
	r, _ := benchReloader(b)
	b.ReportAllocs()
	for b.Loop() {
		if c, _ := r.GetCertificate(nil); c == nil {
			b.Fatal("no certificate")
		}
	}
}

// BenchmarkHandshake is one whole TLS handshake (client and server, ECDSA P-256, over
// loopback), the reload check in it.
func BenchmarkHandshake(b *testing.B) {
	r, ca := benchReloader(b)
	addr := echoServer(b, r)
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	for b.Loop() {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
}

func benchReloader(b *testing.B) (*certfile.Reloader, *testca.CA) {
	ca := testca.New(b, "CA")
	certFile, keyFile, _ := pairFiles(b, ca, b.TempDir())
	r, err := certfile.Load(certFile, keyFile, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	return r, ca
}

// Closing the listener closes a connection that never sent its ClientHello; one that has
// finished its handshake goes on.
func TestListenerClosesSilentConnections(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := testca.New(t, "silent CA")
	certFile, keyFile, _ := pairFiles(t, ca, t.TempDir())
	r, err := certfile.Load(certFile, keyFile, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ln := certfile.NewListener(inner, r.Config())
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // echo, as a server would answer
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()

	silent, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	spoken, err := tls.Dial("tcp", inner.Addr().String(), &tls.Config{RootCAs: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer spoken.Close()
	if _, err := spoken.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(spoken, buf); err != nil {
		t.Fatal(err)
	}
	// The handshake is over (the echo came back): the server saw its ClientHello.
	_ = ln.Close()
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := silent.Read(buf); err != io.EOF {
		t.Fatalf("the silent connection: read %d, %v; want EOF (closed)", n, err)
	}
	if _, err := spoken.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(spoken, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("the connection that spoke: %q %v", buf, err)
	}
}

// A change of mode alone (a deploy hook's chmod making the key readable after the write)
// is a change: the pair is read again.
func TestModeChangeRereadsPair(t *testing.T) {
	f := serve(t)
	dial(t, f.addr, f.ca.Pool())
	if err := os.Chmod(f.keyFile, 0o640); err != nil {
		t.Fatal(err)
	}
	dial(t, f.addr, f.ca.Pool())
	if f.r.Reloads() != 1 {
		t.Fatalf("reloads %d after a chmod, want 1", f.r.Reloads())
	}
}
