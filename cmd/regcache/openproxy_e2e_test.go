package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// allowListDialer connects only to the addresses it was given and records every other
// address it is asked for, connecting to none of them: the proof that no request makes
// regcache reach a host that is not a configured upstream.
type allowListDialer struct {
	allowed map[string]bool
	mu      sync.Mutex
	refused []string
	d       net.Dialer
}

func (a *allowListDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if a.allowed[addr] {
		return a.d.DialContext(ctx, network, addr)
	}
	a.mu.Lock()
	a.refused = append(a.refused, addr)
	a.mu.Unlock()
	return nil, errors.New("test dialer: not an allowed address")
}

// LookupNetIP makes the dialer the test's resolver too: names are recorded, never asked of
// DNS, and resolve to nothing.
func (a *allowListDialer) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	a.mu.Lock()
	a.refused = append(a.refused, "dns:"+host)
	a.mu.Unlock()
	return nil, &net.DNSError{Err: "test resolver resolves nothing", Name: host, IsNotFound: true}
}

func (a *allowListDialer) attempts() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.refused...)
}

// rawRequest sends text as-is over TCP and returns the status line and body.
func rawRequest(t *testing.T, addr, text string) (string, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(text)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", strings.SplitN(text, "\r\n", 2)[0], err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	return resp.Status, string(buf[:n])
}

// TestNoOpenProxy tries every way a client could name a host: ns=, a path prefix, the
// Host header, an absolute-URI request line, and upstream redirects. Only the configured
// upstream's own address is ever dialled.
func TestNoOpenProxy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	dial := &allowListDialer{allowed: map[string]bool{reg.Host: true}}
	rc := startRegcacheWith(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "aliases: [gh]")), harness.Options{Dial: dial.DialContext, Resolver: dial})
	addr := strings.TrimPrefix(rc.URL, "http://")

	for _, path := range []string{
		"/v2/team/app/manifests/v1?ns=evil.example.com",
		"/v2/team/app/manifests/v1?ns=127.0.0.1:22",
		"/v2/team/app/manifests/v1?ns=169.254.169.254",
		"/v2/evil.example.com/team/app/manifests/v1",
		"/v2/169.254.169.254/latest/manifests/v1",
		"/v2/localhost:6379/x/manifests/v1",
		"/v2/" + reg.Host + "/team/app/manifests/v1", // the upstream's address is not its name
		"/v2/evil.example.com/team/app/tags/list",
		"/v2/evil.example.com/team/app/blobs/" + img.Digest,
		"/api/v1/digest?image=evil.example.com/x:1",
		"/api/v1/digest?image=169.254.169.254/latest:1",
	} {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != 404 && r.Status != 400 {
			t.Errorf("%s: %d %s, want a 404/400 registry error", path, r.Status, r.Body)
		}
	}
	// The Host header and an absolute-URI request line name no upstream either.
	for _, text := range []string{
		"GET /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
		"GET http://evil.example.com/v2/team/app/manifests/v1 HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
		"GET http://169.254.169.254/v2/evil.example.com/x/manifests/v1 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
	} {
		status, body := rawRequest(t, addr, text)
		if !strings.HasPrefix(status, "200") && !strings.HasPrefix(status, "404") {
			t.Errorf("%q: %s %s", strings.SplitN(text, "\r\n", 2)[0], status, body)
		}
	}
	// Upstream redirects to other hosts: to a name, to the metadata service, to a
	// private address. Each is refused before any connection.
	for i, to := range []string{"http://evil.example.com/x", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:5000/v2/"} {
		target := to
		fresh := reg.PushImage(t, "team/app", fmt.Sprintf("r%d", i), types.OCIManifestSchema1) // nothing cached
		reg.SetFault(registrytest.Once(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, target, http.StatusTemporaryRedirect)
			return true
		})))
		if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/"+fresh.Digest); r.Status < 400 {
			t.Errorf("redirect to %s: %d", to, r.Status)
		}
	}
	reg.SetFault(nil)
	if r := rc.Do(t, http.MethodGet, "/v2/gh/team/app/manifests/v1"); r.Status != 200 {
		t.Fatalf("the configured upstream no longer answers: %d %s", r.Status, r.Body)
	}
	// Internal literals are refused before the dialer; a redirect to a public name is
	// looked up (the test resolver answers nothing) and never dialled.
	for _, a := range dial.attempts() {
		if a != "dns:evil.example.com" {
			t.Fatalf("regcache tried to reach %s", a)
		}
	}
}
