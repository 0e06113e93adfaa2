package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"regcache/internal/loopback"
)

func TestInternalHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"[::1]", true},
		{"localhost", true},
		{"LOCALHOST", true},
		{"api.localhost", true},
		{"10.0.0.1", true},
		{"172.16.5.4", true},
		{"192.168.1.1", true},
		{"169.254.169.254", true}, // cloud metadata
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"fd00:ec2::254", true}, // AWS metadata over IPv6 (ULA)
		{"100.64.0.1", true},    // carrier-grade NAT
		{"100.100.100.200", true},
		{"0.0.0.0", true},
		{"::", true},
		{"224.0.0.1", true},
		{"::ffff:127.0.0.1", true}, // IPv4-mapped loopback
		{"::ffff:169.254.169.254", true},
		// IPv6 forms that carry an IPv4 address reach that address
		{"::169.254.169.254", true},                    // IPv4-compatible, ::/96
		{"::ffff:0:a9fe:a9fe", true},                   // SIIT, ::ffff:0:0/96
		{"64:ff9b::a9fe:a9fe", true},                   // NAT64, 64:ff9b::/96
		{"64:ff9b::10.0.0.1", true},                    //
		{"64:ff9b:1::a9fe:a9fe", true},                 // local-use NAT64, 64:ff9b:1::/48
		{"64:ff9b:1::808:808", true},                   // local-use: the operator's own network whatever it embeds
		{"2002:a9fe:a9fe::1", true},                    // 6to4, 2002::/16
		{"2002:7f00:1::1", true},                       // 6to4 of 127.0.0.1
		{"2001:0:4136:e378:8000:63bf:5601:5601", true}, // Teredo client 169.254.169.254 (inverted)
		{"::2", true},                                  // 0.0.0.2: "this network", never a registry
		{"0.1.2.3", true},
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8: how an IPv6-only network reaches a public registry
		{"2002:808:808::1", false},  // 6to4 of 8.8.8.8
		{"8.8.8.8", false},
		{"2606:4700::1111", false},
		{"100.128.0.1", false}, // just past 100.64.0.0/10
		{"registry-1.docker.io", false},
		{"ghcr.io", false},
		{"localhost.example.com", false},
		{"", false},
	} {
		if got := InternalHost(tc.host); got != tc.want {
			t.Errorf("InternalHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestSameOrigin(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"https://ghcr.io/v2/a/manifests/x", "https://ghcr.io/v2/other/path", true},
		{"https://ghcr.io/v2/", "https://GHCR.IO/token", true},
		{"HTTPS://ghcr.io/", "https://ghcr.io/", true},
		{"http://127.0.0.1:5000/a", "http://127.0.0.1:5000/b?x=1", true},
		{"https://ghcr.io/", "http://ghcr.io/", false},                               // scheme downgrade
		{"https://ghcr.io/", "https://pkg-containers.githubusercontent.com/", false}, // CDN
		{"https://ghcr.io/", "https://ghcr.io.evil.example/", false},                 // suffix trick
		{"https://evil.ghcr.io/", "https://ghcr.io/", false},                         // subdomain
		{"http://127.0.0.1:5000/", "http://127.0.0.1:5001/", false},                  // other port
		{"http://127.0.0.1:5000/", "http://localhost:5000/", false},                  // other name
		{"https://ghcr.io/", "https://ghcr.io:443/", false},                          // conservative: explicit port counts as another origin
		{"https://user@ghcr.io/", "https://ghcr.io/", true},                          // user-info is no part of the origin
	} {
		a, _ := url.Parse(tc.a)
		b, _ := url.Parse(tc.b)
		if got := sameOrigin(a, b); got != tc.want {
			t.Errorf("sameOrigin(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestAllowRedirect(t *testing.T) {
	for _, tc := range []struct {
		base, to string
		ok       bool
	}{
		// a public registry sends clients to CDNs and regional backends
		{"https://registry-1.docker.io", "https://production.cloudflare.docker.com/registry-v2/x", true},
		{"https://registry.k8s.io", "https://us-west1-docker.pkg.dev/k8s-artifacts-prod/images/pause", true},
		{"https://registry-1.docker.io", "https://8.8.8.8/x", true},
		// ...but never into the network regcache runs in
		{"https://registry-1.docker.io", "https://169.254.169.254/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[fd00:ec2::254]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://127.0.0.1:2375/containers/json", false},
		{"https://registry-1.docker.io", "https://localhost/x", false},
		{"https://registry-1.docker.io", "https://10.0.0.8/x", false},
		{"https://registry-1.docker.io", "https://[::1]/x", false},
		{"https://registry-1.docker.io", "https://[::ffff:127.0.0.1]/x", false},
		{"https://registry-1.docker.io", "https://0.0.0.0/x", false},
		{"https://registry-1.docker.io", "https://100.100.100.200/latest/meta-data/", false}, // Alibaba metadata
		// IPv6 forms that carry 169.254.169.254 reach it all the same
		{"https://registry-1.docker.io", "https://[::169.254.169.254]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[::ffff:0:a9fe:a9fe]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[64:ff9b::a9fe:a9fe]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[2002:a9fe:a9fe::1]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[2001:0:4136:e378:8000:63bf:5601:5601]/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://[64:ff9b::7f00:1]:2375/x", false},
		{"https://registry-1.docker.io", "https://[64:ff9b::808:808]/x", true}, // NAT64 of a public address
		// numeric spellings of 169.254.169.254 that proxies and inet_aton accept
		{"https://registry-1.docker.io", "https://2852039166/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://0xa9fea9fe/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://0XA9FEA9FE/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://0251.0376.0251.0376/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://169.254.43518/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://169.16689662/latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://169.254.169.254./latest/meta-data/", false},
		{"https://registry-1.docker.io", "https://cdn.123/x", false}, // no top-level domain is numeric
		{"https://registry-1.docker.io", "https://cdn.0x1f/x", false},
		{"https://registry-1.docker.io", "https://1e100.net/x", true}, // digits inside a name are fine
		{"https://registry-1.docker.io", "https://0x.example/x", true},
		// nor anywhere but http(s), nor from https down to http
		{"https://registry-1.docker.io", "http://production.cloudflare.docker.com/x", false},
		{"https://registry-1.docker.io", "ftp://example.com/x", false},
		{"https://registry-1.docker.io", "file:///etc/passwd", false},
		{"http://127.0.0.1:5000", "gopher://127.0.0.1:6379/_FLUSHALL", false},
		// a registry on loopback (tests, a sidecar) may send us to loopback, nowhere internal else
		{"http://127.0.0.1:5000", "http://127.0.0.1:5001/blob", true},
		{"http://127.0.0.1:5000", "http://localhost:5001/blob", true},
		{"http://localhost:5000", "http://[::1]:5001/blob", true},
		{"http://127.0.0.1:5000", "http://169.254.169.254/latest/meta-data/", false},
		{"http://127.0.0.1:5000", "http://10.0.0.8/x", false},
		{"http://127.0.0.1:5000", "http://example.com/x", true},
		// a registry in a private network may use its private storage, not the host's loopback
		{"http://10.1.2.3:5000", "http://10.9.9.9:9000/bucket/x", true},
		{"http://10.1.2.3:5000", "http://192.168.7.7/x", true},
		{"http://10.1.2.3:5000", "http://127.0.0.1:2375/x", false},
		{"http://10.1.2.3:5000", "http://169.254.169.254/latest/meta-data/", false},
		{"http://10.1.2.3:5000", "http://[fd00:ec2::254]/latest/meta-data/", false},
		{"http://10.1.2.3:5000", "http://0.0.0.0:2375/x", false},
		// even a registry on link-local addresses may not reach the metadata service
		{"http://169.254.10.10:5000", "http://169.254.10.11/x", true},
		{"http://169.254.10.10:5000", "http://169.254.169.254/latest/meta-data/", false},
		{"http://169.254.10.10:5000", "http://[::169.254.169.254]/latest/meta-data/", false},
		{"http://169.254.10.10:5000", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", false},
		{"http://169.254.10.10:5000", "http://[2002:a9fe:a9fe::1]/latest/meta-data/", false},
		{"http://10.1.2.3:5000", "http://[::ffff:0:a9fe:a9fe]/latest/meta-data/", false},
		{"http://10.1.2.3:5000", "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/", false},
		// a registry reached by name is treated as public: it may not reach internal literals
		{"https://registry.corp.example", "https://10.0.0.8/x", false},
	} {
		// No proxy: names are then checked where they are dialled (guard_test.go), and
		// nothing here may ask DNS.
		r, err := New(Options{Name: "t", URL: tc.base, Proxy: noProxy})
		if err != nil {
			t.Fatal(err)
		}
		to, err := url.Parse(tc.to)
		if err != nil {
			t.Fatal(err)
		}
		err = r.allowRedirect(context.Background(), to)
		if (err == nil) != tc.ok {
			t.Errorf("from %s to %s: %v, want allowed=%v", tc.base, tc.to, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrUnavailable) {
			t.Errorf("from %s to %s: %v is not ErrUnavailable", tc.base, tc.to, err)
		}
	}
}

func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

// TestAllowRedirectThroughProxy: through an HTTP(S) proxy, the proxy resolves names, so
// localhost and *.localhost would be the proxy's own loopback: refused even from a
// registry on loopback, unless it is the upstream's own host.
func TestAllowRedirectThroughProxy(t *testing.T) {
	proxyURL, _ := url.Parse("http://127.0.0.1:3128")
	resolver := fakeResolver{"cdn.example": {netip.MustParseAddr("203.0.113.10")}}
	for _, tc := range []struct {
		base, to string
		ok       bool
	}{
		{"http://127.0.0.1:5000", "http://x.localhost:5001/blob", false},
		{"http://127.0.0.1:5000", "http://localhost:6379/", false},
		{"http://127.0.0.1:5000", "http://LOCALHOST./", false},
		{"http://[::1]:5000", "http://admin.localhost/", false},
		{"http://localhost:5000", "http://localhost:5000/moved", true}, // the upstream's own host
		{"http://localhost:5000", "http://LocalHost./moved", true},
		{"http://localhost:5000", "http://api.localhost/", false},
		{"http://127.0.0.1:5000", "http://cdn.example/blob", true},
	} {
		r, err := New(Options{Name: "t", URL: tc.base, Resolver: resolver,
			Proxy: func(*http.Request) (*url.URL, error) { return proxyURL, nil }})
		if err != nil {
			t.Fatal(err)
		}
		to, _ := url.Parse(tc.to)
		if err := r.allowRedirect(context.Background(), to); (err == nil) != tc.ok {
			t.Errorf("from %s to %s through a proxy: %v, want allowed=%v", tc.base, tc.to, err, tc.ok)
		}
	}
}

// seen is what a test server recorded about one request.
type seen struct {
	method, path, auth string
}

type recorder struct {
	mu  sync.Mutex
	all []seen
}

func (rc *recorder) add(r *http.Request) {
	rc.mu.Lock()
	rc.all = append(rc.all, seen{r.Method, r.URL.Path, r.Header.Get("Authorization")})
	rc.mu.Unlock()
}

func (rc *recorder) get() []seen {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seen(nil), rc.all...)
}

const (
	testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`
)

var manifestDigest = digest.FromString(testManifest).String()

// serveManifest answers like a registry for testManifest.
func serveManifest(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", MediaTypeOCIManifest)
	w.Header().Set("Docker-Content-Digest", manifestDigest)
	w.Header().Set("Content-Length", strconv.Itoa(len(testManifest)))
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(testManifest))
	}
}

// basicRegistry wants Basic user:pass on everything and hands manifest requests to next.
func basicRegistry(t *testing.T, rec *recorder, next http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
			w.Header().Set("WWW-Authenticate", `Basic realm="t"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.Contains(r.URL.Path, "/manifests/") {
			next(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestRedirectKeepsHEADAndDropsAuthorizationAcrossHosts(t *testing.T) {
	var farRec, nearRec recorder
	far := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		farRec.add(r)
		serveManifest(w, r)
	}))
	t.Cleanup(far.Close)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			farRec = recorder{}
			nearRec = recorder{}
			near := basicRegistry(t, &nearRec, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, far.URL+"/backend"+r.URL.Path, code)
			})
			r := newTestRegistry(t, near.URL, "user", "pass")
			ctx := context.Background()
			d, err := r.HeadManifest(ctx, "a/b", "v1")
			if err != nil {
				t.Fatal(err)
			}
			if string(d.Digest) != manifestDigest || d.Body != nil {
				t.Fatalf("HEAD answer %+v", d)
			}
			m, err := r.GetManifest(ctx, "a/b", "v1")
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Body) != testManifest {
				t.Fatalf("GET body %q", m.Body)
			}
			got := farRec.get()
			if len(got) != 2 || got[0].method != http.MethodHead || got[1].method != http.MethodGet {
				t.Fatalf("far side saw %+v, want HEAD then GET", got)
			}
			for _, s := range got {
				if s.auth != "" {
					t.Fatalf("Authorization %q reached the redirect target", s.auth)
				}
				if s.path != "/backend/v2/a/b/manifests/v1" {
					t.Fatalf("far side path %s", s.path)
				}
			}
			authed := 0
			for _, s := range nearRec.get() {
				if strings.Contains(s.path, "/manifests/") && strings.HasPrefix(s.auth, "Basic ") {
					authed++
				}
			}
			if authed != 2 {
				t.Fatalf("the registry itself got %d authorized manifest requests, want 2: %+v", authed, nearRec.get())
			}
		})
	}
}

func TestRedirectSameOriginKeepsAuthorization(t *testing.T) {
	var rec recorder
	var srv *httptest.Server
	srv = basicRegistry(t, &rec, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/") {
			w.Header().Set("Location", "/moved"+r.URL.Path) // relative, as registries often send
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		serveManifest(w, r)
	})
	r := newTestRegistry(t, srv.URL, "user", "pass")
	if _, err := r.HeadManifest(context.Background(), "a/b", "v1"); err != nil {
		t.Fatal(err)
	}
	var last seen
	for _, s := range rec.get() {
		last = s
	}
	if last.path != "/moved/v2/a/b/manifests/v1" || last.method != http.MethodHead || !strings.HasPrefix(last.auth, "Basic ") {
		t.Fatalf("same-origin redirect target saw %+v", last)
	}
}

func TestRedirectLoopIsBounded(t *testing.T) {
	var rec recorder
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, r.URL.Path+"x", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	r := newTestRegistry(t, srv.URL, "", "")
	_, err := r.GetManifest(context.Background(), "a/b", "v1")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("got %v, want ErrUnavailable about redirects", err)
	}
	if n := len(rec.get()); n != 1+maxRedirects+1 {
		t.Fatalf("%d requests, want a ping and %d", n, maxRedirects+1)
	}
}

func TestRedirectToMetadataServiceIsNeverDialled(t *testing.T) {
	for _, target := range []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://[fd00:ec2::254]/latest/meta-data/",
		"http://10.0.0.1:2375/containers/json",
		"http://0.0.0.0:2375/containers/json",
		"http://[::169.254.169.254]/latest/meta-data/",
		"http://[::ffff:0:a9fe:a9fe]/latest/meta-data/",
		"http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
		"http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",
		"http://[2002:a9fe:a9fe::1]/latest/meta-data/",
	} {
		t.Run(target, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				http.Redirect(w, r, target, http.StatusTemporaryRedirect)
			}))
			t.Cleanup(srv.Close)
			var dial loopback.Dialer
			r, err := New(Options{Name: "t", URL: srv.URL, DialContext: dial.DialContext})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Close)
			_, err = r.HeadManifest(context.Background(), "a/b", "v1")
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "refused") {
				t.Fatalf("got %v, want the redirect refused", err)
			}
			if refused := dial.Refused(); len(refused) != 0 {
				t.Fatalf("regcache tried to dial %v", refused)
			}
		})
	}
}

// TestRedirectTargetCannotSteerCredentials: a redirect target (a CDN, or anything an
// upstream points at) that answers 401 with its own Bearer challenge must not make regcache
// send the upstream's credentials to the realm it names.
func TestRedirectTargetCannotSteerCredentials(t *testing.T) {
	var thiefRec recorder
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		thiefRec.add(r)
		_, _ = w.Write([]byte(`{"token":"x"}`))
	}))
	t.Cleanup(thief.Close)
	far := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+thief.URL+`/token",service="cdn"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(far.Close)
	var nearRec recorder
	var near *httptest.Server
	near = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nearRec.add(r)
		switch {
		case r.URL.Path == "/token":
			if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			_, _ = w.Write([]byte(`{"token":"good"}`))
		case r.Header.Get("Authorization") != "Bearer good":
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+near.URL+`/token",service="near"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			http.Redirect(w, r, far.URL+r.URL.Path, http.StatusTemporaryRedirect)
		}
	}))
	t.Cleanup(near.Close)

	r := newTestRegistry(t, near.URL, "user", "pass")
	for i := 0; i < 2; i++ {
		_, err := r.GetManifest(context.Background(), "a/b", "v1")
		if !errors.Is(err, ErrDenied) {
			t.Fatalf("got %v, want ErrDenied", err)
		}
	}
	if got := thiefRec.get(); len(got) != 0 {
		t.Fatalf("the redirect target's realm was asked for a token: %+v", got)
	}
	// The upstream's own challenge still works afterwards: its token is reused.
	tokens := 0
	for _, s := range nearRec.get() {
		if s.path == "/token" {
			tokens++
		}
	}
	if tokens != 1 {
		t.Fatalf("%d token requests to the upstream's own realm, want 1", tokens)
	}
}
