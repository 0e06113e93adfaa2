package harness

// Starting regcache in process: the one way end-to-end tests run it (process.go runs the
// binary, for the few tests that need a real process).

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/configs"
)

// Server is what regcache's wiring returns: it serves a listener until shut down.
type Server interface {
	Serve(net.Listener) error
	ShutdownWithContext(context.Context) error
}

// Wiring turns a parsed config into a Server as the binary does. The wiring is package
// main's (cmd/regcache's build), so the test hands it to Start.
type Wiring func(cfg *configs.Config, log *zap.Logger, o Options) (Server, error)

// Options are the choices a test makes beyond the config.
type Options struct {
	// NoAccessLog drops the one log line per request (a burst of thousands would fill Logs).
	NoAccessLog bool
	// Quiet discards every log line (Logs stays empty) and the access log: for tests that
	// measure the heap, which a log kept in memory would grow with every request.
	Quiet bool
	// Dial replaces the upstream dialer (a loopback.Dialer proves nothing beyond loopback
	// is dialled).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver replaces DNS for the upstream dial guard (a loopback.Dialer resolves nothing).
	Resolver interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}
	// Proxy replaces the HTTP(S) proxy from the environment.
	Proxy func(*http.Request) (*url.URL, error)
	// AccessLogTo is where the wiring writes the access log: Start sets it to Logs unless
	// NoAccessLog or Quiet.
	AccessLogTo io.Writer
	// TLS serves HTTPS with its pair (NewTLS): Start adds its tls: block to the config
	// unless the config has one, and Instance.Client trusts its CA.
	TLS *TLS
}

// Instance is a regcache serving on 127.0.0.1 for one test.
type Instance struct {
	// URL is http://127.0.0.1:port (https:// with a tls: block), Addr 127.0.0.1:port.
	URL, Addr string
	// Logs holds regcache's log lines, JSON at debug level (nothing with Options.Quiet).
	Logs *Logs
	// Client has no proxy from the environment and a 15 s timeout.
	Client *http.Client
	// Server is what the wiring built, for the tests that look inside it.
	Server Server
	stop   func(t testing.TB)
}

// shutdownWait bounds how long Stop waits for requests in flight and for Serve to return.
const shutdownWait = 10 * time.Second

// Start parses cfgYAML exactly as the binary does, wires it with wire and serves it on a
// loopback port until Stop, which the end of the test calls too.
func Start(t testing.TB, cfgYAML string, wire Wiring, o Options) *Instance {
	t.Helper()
	if o.TLS != nil && !strings.Contains("\n"+cfgYAML, "\ntls:") {
		cfgYAML += o.TLS.Block()
	}
	cfg, err := configs.Parse([]byte(cfgYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &Logs{}
	log := zap.NewNop()
	if !o.Quiet {
		log = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, zapcore.DebugLevel))
	}
	if !o.NoAccessLog && !o.Quiet {
		o.AccessLogTo = logs
	}
	srv, err := wire(cfg, log, o)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if f, ok := srv.(interface{ FlushLogs() }); ok {
		logs.flush = f.FlushLogs // the access log is buffered: a test reads it whole
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	transport, scheme := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 256}, "http://"
	if cfg.TLS != nil {
		scheme = "https://"
		if o.TLS != nil {
			transport.TLSClientConfig = &tls.Config{RootCAs: o.TLS.CA.Pool(), MinVersion: tls.VersionTLS12}
		}
	}
	in := &Instance{
		URL: scheme + ln.Addr().String(), Addr: ln.Addr().String(), Logs: logs, Server: srv,
		Client: &http.Client{Timeout: 15 * time.Second, Transport: transport},
	}
	var once sync.Once
	in.stop = func(t testing.TB) {
		t.Helper()
		once.Do(func() {
			in.Client.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
			defer cancel()
			if err := srv.ShutdownWithContext(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			select {
			case <-served:
			case <-ctx.Done():
				t.Error("Serve did not return after shutdown")
			}
		})
	}
	t.Cleanup(func() { in.Stop(t) })
	return in
}

// Stop shuts regcache down as SIGTERM does: it closes the test client's idle connections,
// then waits up to 10 s for requests in flight and for Serve to return; a failure fails the
// test. Only the first call does anything.
func (in *Instance) Stop(t testing.TB) {
	t.Helper()
	in.stop(t)
}
