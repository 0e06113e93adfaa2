package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/configs"
)

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Sync() error { return nil }

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// instance is a regcache running on 127.0.0.1 for one test.
type instance struct {
	URL  string
	Logs *syncBuffer
	// Client has no proxy from the environment and a short timeout.
	Client *http.Client
	// stop shuts the instance down (once; cleanup calls it too), for tests that replace it.
	stop func()
}

// startRegcache parses cfgYAML exactly as the binary would, wires it with build, and serves
// on a loopback port until the test ends. Logs are JSON at debug level, kept for checks.
func startRegcache(t testing.TB, cfgYAML string) *instance {
	t.Helper()
	return startRegcacheWith(t, cfgYAML, buildOptions{AccessLog: true})
}

// startRegcacheWith is startRegcache with wiring options (an injected dialer).
func startRegcacheWith(t testing.TB, cfgYAML string, bo buildOptions) *instance {
	t.Helper()
	cfg, err := configs.Parse([]byte(cfgYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	enc := zap.NewProductionEncoderConfig()
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), logs, zapcore.DebugLevel))
	srv, err := build(cfg, log, bo)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	var once sync.Once
	stop := func() { once.Do(func() { _ = srv.ShutdownWithContext(t.Context()) }) }
	t.Cleanup(stop)
	return &instance{
		URL:  "http://" + ln.Addr().String(),
		Logs: logs,
		Client: &http.Client{
			Timeout:   15 * time.Second,
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 256},
		},
		stop: stop,
	}
}

// response is what a test needs from an answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends method to path (with query) and reads the whole answer.
func (in *instance) do(t testing.TB, method, path string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, in.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := in.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// upstreamYAML is one upstreams: entry for a test registry.
func upstreamYAML(name, url string, extra ...string) string {
	s := "  - name: " + name + "\n    url: " + url + "\n"
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// configYAML builds a config whose first upstream is the default.
func configYAML(cacheExtra string, upstreams ...string) string {
	def := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(upstreams[0], "\n", 2)[0], "  - name:"))
	return "listen: 127.0.0.1:0\ndefault_upstream: " + def + "\ncache:\n  max_size: 64MiB\n" + cacheExtra +
		"upstreams:\n" + strings.Join(upstreams, "")
}
