// Package registrytest runs real registries for regcache's tests: go-containerregistry's
// in-memory registry on 127.0.0.1, optionally behind Bearer-token auth like ghcr and Docker
// Hub (anonymous, or with a token endpoint that wants Basic credentials) or plain Basic
// auth, with every request counted and a hook to inject faults.
package registrytest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// AuthMode is how a test registry asks clients to authenticate.
type AuthMode int

// The auth modes.
const (
	NoAuth      AuthMode = iota
	Bearer               // anonymous token endpoint, like ghcr.io and Docker Hub for public images
	BearerBasic          // token endpoint that wants Basic credentials
	Basic                // plain Basic auth on every request
)

// Fault handles a request instead of the registry when it returns true.
type Fault func(w http.ResponseWriter, r *http.Request) bool

// Registry is a running test registry.
type Registry struct {
	// URL is the base URL clients use (http://127.0.0.1:port).
	URL string
	// Host is host:port.
	Host string
	// Username and Password are the credentials BearerBasic and Basic registries want.
	Username, Password string

	mode    AuthMode
	inner   http.Handler
	seed    *httptest.Server
	srv     *httptest.Server
	fault   atomic.Pointer[Fault]
	mu      sync.Mutex
	counts  map[string]int
	tokens  map[string]bool
	authLog []string // Authorization headers seen, for leak checks
	paging  Paging
	maxPage int
}

// New starts a registry on 127.0.0.1 and stops it when the test ends.
func New(t testing.TB, mode AuthMode) *Registry {
	t.Helper()
	r := &Registry{
		mode:     mode,
		inner:    registry.New(registry.Logger(nopLogger())),
		counts:   map[string]int{},
		tokens:   map[string]bool{},
		Username: "robot",
		Password: "s3cret-" + randHex(8),
	}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	r.seed = httptest.NewServer(r.inner)
	t.Cleanup(r.srv.Close)
	t.Cleanup(r.seed.Close)
	r.URL = r.srv.URL
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// SetFault installs f (nil removes it).
func (r *Registry) SetFault(f Fault) {
	if f == nil {
		r.fault.Store(nil)
		return
	}
	r.fault.Store(&f)
}

// Count is how many requests with method for kind ("manifest", "blob", "tags", "token",
// "base") reached the registry, faults included.
func (r *Registry) Count(method, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[method+" "+kind]
}

// Total is every request counted so far.
func (r *Registry) Total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.counts {
		n += c
	}
	return n
}

// ResetCounts zeroes the counters.
func (r *Registry) ResetCounts() {
	r.mu.Lock()
	r.counts = map[string]int{}
	r.mu.Unlock()
}

// AuthHeaders returns every Authorization header the registry received.
func (r *Registry) AuthHeaders() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.authLog...)
}

// IssuedTokens returns the tokens the token endpoint handed out.
func (r *Registry) IssuedTokens() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for t := range r.tokens {
		out = append(out, t)
	}
	return out
}

func kindOf(path string) string {
	switch {
	case path == "/token":
		return "token"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case path == "/v2/" || path == "/v2":
		return "base"
	}
	return "other"
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.counts[req.Method+" "+kindOf(req.URL.Path)]++
	if a := req.Header.Get("Authorization"); a != "" {
		r.authLog = append(r.authLog, a)
	}
	r.mu.Unlock()
	if f := r.fault.Load(); f != nil && (*f)(w, req) {
		return
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only test registry; seed with the Push helpers", http.StatusMethodNotAllowed)
		return
	}
	if req.URL.Path == "/token" {
		r.serveToken(w, req)
		return
	}
	if !r.authorized(req) {
		r.challenge(w, req)
		return
	}
	if r.servePagedTags(w, req) {
		return
	}
	r.inner.ServeHTTP(w, req)
}

func (r *Registry) authorized(req *http.Request) bool {
	a := req.Header.Get("Authorization")
	switch r.mode {
	case Bearer, BearerBasic:
		tok, ok := strings.CutPrefix(a, "Bearer ")
		r.mu.Lock()
		defer r.mu.Unlock()
		return ok && r.tokens[tok]
	case Basic:
		u, p, ok := req.BasicAuth()
		return ok && u == r.Username && p == r.Password
	}
	return true
}

func (r *Registry) challenge(w http.ResponseWriter, req *http.Request) {
	switch r.mode {
	case Basic:
		w.Header().Set("WWW-Authenticate", `Basic realm="registrytest"`)
	default:
		scope := ""
		if repo, _, ok := strings.Cut(strings.TrimPrefix(req.URL.Path, "/v2/"), "/manifests/"); ok {
			scope = fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="registrytest"%s`, r.URL, scope))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
}

func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	if r.mode == BearerBasic {
		u, p, ok := req.BasicAuth()
		if !ok || u != r.Username || p != r.Password {
			w.Header().Set("WWW-Authenticate", `Basic realm="registrytest-token"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
	}
	tok := "tok-" + randHex(16)
	r.mu.Lock()
	r.tokens[tok] = true
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
}

// Pushed describes what a Push helper stored.
type Pushed struct {
	Digest    string
	MediaType string
	Body      []byte
}

// PushImage stores a small random image under repo:tag with manifest media type mt
// (types.DockerManifestSchema2 or types.OCIManifestSchema1).
func (r *Registry) PushImage(t testing.TB, repo, tag string, mt types.MediaType) Pushed {
	t.Helper()
	img := randomImage(t, mt)
	ref := r.seedRef(t, repo, tag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	return describe(t, img)
}

// PushIndex stores an index (types.OCIImageIndex or types.DockerManifestList) of one image
// per platform ("linux/amd64", "linux/arm64/v8") under repo:tag.
func (r *Registry) PushIndex(t testing.TB, repo, tag string, mt types.MediaType, platforms ...string) Pushed {
	t.Helper()
	child := types.OCIManifestSchema1
	if mt == types.DockerManifestList {
		child = types.DockerManifestSchema2
	}
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, mt)
	for _, p := range platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: randomImage(t, child, plat), Descriptor: v1.Descriptor{Platform: plat}})
	}
	ref := r.seedRef(t, repo, tag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	raw, _ := idx.RawManifest()
	d, _ := idx.Digest()
	return Pushed{Digest: d.String(), MediaType: string(mt), Body: raw}
}

// PutManifest stores raw manifest bytes under repo:ref, exactly as given.
func (r *Registry) PutManifest(t testing.TB, repo, ref, mediaType string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, r.seed.URL+"/v2/"+repo+"/manifests/"+ref, strings.NewReader(string(body)))
	req.Header.Set("Content-Type", mediaType)
	resp, err := r.seed.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s:%s: %s", repo, ref, resp.Status)
	}
}

func (r *Registry) seedRef(t testing.TB, repo, tag string) name.Reference {
	ref, err := name.NewTag(strings.TrimPrefix(r.seed.URL, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// randomImage makes a one-layer image of type mt whose config states platform (default
// linux/amd64), as real images do.
func randomImage(t testing.TB, mt types.MediaType, platform ...*v1.Platform) v1.Image {
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if len(platform) > 0 && platform[0] != nil {
		cf.OS, cf.Architecture, cf.Variant = platform[0].OS, platform[0].Architecture, platform[0].Variant
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	if mt == types.OCIManifestSchema1 {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	return img
}

func describe(t testing.TB, img v1.Image) Pushed {
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	return Pushed{Digest: d.String(), MediaType: string(mt), Body: raw}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// DeleteTag removes repo:tag (the manifest it names stays, under its digest).
func (r *Registry) DeleteTag(t testing.TB, repo, tag string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, r.seed.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	resp, err := r.seed.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE %s:%s: %s", repo, tag, resp.Status)
	}
}
