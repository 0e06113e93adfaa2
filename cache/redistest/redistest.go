// Package redistest runs a real redis-server (or valkey-server) on 127.0.0.1 for tests of
// the shared tier. Each Server is its own process on its own port, with persistence off,
// so tests neither share state nor leave files behind.
package redistest

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Install says how to get the server the tests need.
const Install = "redis-server not found: install it (apt-get install -y redis-server, or valkey-server) to run the shared-tier tests; bash .ci/test does"

// Skip skips the test for want of a server, or fails it where one must be there
// (REGCACHE_REQUIRE_REDIS is set by .ci/test, which installs it).
func Skip(t testing.TB) {
	t.Helper()
	if os.Getenv("REGCACHE_REQUIRE_REDIS") != "" {
		t.Fatal(Install + " (REGCACHE_REQUIRE_REDIS is set)")
	}
	t.Skip(Install)
}

// Binary is the path of redis-server or valkey-server, or "" when neither is installed.
func Binary() string {
	for _, name := range []string{"redis-server", "valkey-server"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// Server is one redis-server process.
type Server struct {
	// Addr is 127.0.0.1:port; it stays the same across Kill and Start.
	Addr string
	t    testing.TB
	bin  string
	args []string
	tls  *tls.Config
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs a server for the test and stops it at cleanup. It skips the test, naming
// what to install, when no server binary is there. extra are more "--key value" arguments
// (e.g. "--requirepass", "pw").
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return start(t, nil, func(port string) []string { return append([]string{"--port", port}, extra...) })
}

// StartTLS runs a server that speaks only TLS, with the PEM certificate and key in
// certFile and keyFile and no client certificates asked; Do dials it with clientTLS.
func StartTLS(t testing.TB, certFile, keyFile string, clientTLS *tls.Config, extra ...string) *Server {
	t.Helper()
	return start(t, clientTLS, func(port string) []string {
		return append([]string{"--port", "0", "--tls-port", port, "--tls-cert-file", certFile, "--tls-key-file", keyFile,
			"--tls-auth-clients", "no"}, extra...)
	})
}

func start(t testing.TB, clientTLS *tls.Config, portArgs func(port string) []string) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		Skip(t)
	}
	var lastErr error
	for range 5 {
		port := freePort(t)
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), t: t, bin: bin, tls: clientTLS}
		s.args = append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--protected-mode", "no", "--dir", t.TempDir(), "--loglevel", "warning"}, portArgs(strconv.Itoa(port))...)
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("redistest: could not start %s: %v", bin, lastErr)
	return nil
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() error {
	cmd := exec.Command(s.bin, s.args...)
	var out strings.Builder // shown only when the server fails to start
	cmd.Stdout, cmd.Stderr = &syncWriter{w: &out}, &syncWriter{w: &out}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("exited at start (port taken?): %s", out.String())
		default:
		}
		if s.ping() == nil {
			s.mu.Lock()
			s.cmd, s.done = cmd, done
			s.mu.Unlock()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("did not answer PING within 10s: %s", out.String())
}

// syncWriter lets exec's two copying goroutines share one builder.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// Start starts the server again on the same port after Kill (empty: nothing persisted).
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// Kill ends the server at once, as a crash would (SIGKILL).
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Do sends one command and returns the reply line (first line only: enough for SET, GET
// of short values, DEL, KEYS counts, FLUSHALL). Tests use it to plant and inspect entries
// without a client library of their own.
func (s *Server) Do(args ...string) (string, error) {
	var c net.Conn
	var err error
	if s.tls != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.Addr, s.tls)
	} else {
		c, err = net.DialTimeout("tcp", s.Addr, 2*time.Second)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case strings.HasPrefix(line, "$"):
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return line, nil
}

func (s *Server) ping() error {
	got, err := s.Do("PING")
	if err != nil && strings.Contains(err.Error(), "NOAUTH") {
		return nil // up, and wants a password: the test's client sends one
	}
	if err == nil && got != "+PONG" {
		err = fmt.Errorf("PING answered %q", got)
	}
	return err
}
