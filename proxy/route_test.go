package proxy

import (
	"regexp"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"regcache/upstream"
)

// nameGrammar and tagGrammar are the distribution spec's own regular expressions; the hand
// written checkers must agree with them on every input.
var (
	nameGrammar = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagGrammar  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

func TestValidRepo(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"nginx", true},
		{"library/nginx", true},
		{"linuxserver/nginx", true},
		{"a/b/c/d", true},
		{"foo.bar", true},
		{"foo_bar", true},
		{"foo__bar", true},
		{"foo-bar", true},
		{"foo---bar", true},
		{"a0.b1-c2_d3__e4", true},
		{"0", true},
		{"", false},
		{"Nginx", false},           // uppercase
		{"library/Nginx", false},   // uppercase in a later component
		{"..", false},              // path traversal
		{"foo/../bar", false},      // path traversal in the middle
		{"foo/./bar", false},       // dot component
		{".foo", false},            // leading separator
		{"foo.", false},            // trailing separator
		{"-foo", false},            // leading dash
		{"foo-", false},            // trailing dash
		{"_foo", false},            // leading underscore
		{"foo___bar", false},       // three underscores
		{"foo._bar", false},        // mixed separators
		{"foo.-bar", false},        // mixed separators
		{"foo-.bar", false},        // mixed separators
		{"foo_-bar", false},        // mixed separators
		{"foo-_bar", false},        // mixed separators
		{"foo..bar", false},        // two dots
		{"foo//bar", false},        // empty component
		{"/foo", false},            // leading slash
		{"foo/", false},            // trailing slash
		{"foo bar", false},         // space
		{"foo:bar", false},         // colon belongs to hosts and digests
		{"foo%2fbar", false},       // escape left in
		{"f\u00f6o", false},        // non-ASCII
		{"foo\x00bar", false},      // NUL
		{"foo/bar\\baz", false},    // backslash
		{"registry:5000/x", false}, // a host is never part of the repository
	} {
		if got := upstream.ValidRepository([]byte(tc.name)); got != tc.want {
			t.Errorf("upstream.ValidRepository(%q) = %v, want %v", tc.name, got, tc.want)
		}
		if g := nameGrammar.MatchString(tc.name); g != tc.want {
			t.Errorf("test table disagrees with the spec grammar on %q", tc.name)
		}
	}
}

// TestValidRepoMatchesGrammar checks every string up to length 6 over the alphabet that
// matters (lower/upper letter, digit, each separator, slash) against the spec's regexp.
func TestValidRepoMatchesGrammar(t *testing.T) {
	const alphabet = "a0A._-/"
	n := 0
	var walk func(prefix []byte)
	walk = func(prefix []byte) {
		if len(prefix) > 0 {
			n++
			if got, want := upstream.ValidRepository(prefix), nameGrammar.Match(prefix); got != want {
				t.Errorf("upstream.ValidRepository(%q) = %v, grammar says %v", prefix, got, want)
			}
		}
		if len(prefix) == 6 {
			return
		}
		for i := 0; i < len(alphabet); i++ {
			walk(append(prefix, alphabet[i]))
		}
	}
	walk(make([]byte, 0, 6))
	if n < 100_000 {
		t.Fatalf("only %d strings checked", n)
	}
}

func TestValidTag(t *testing.T) {
	for _, tc := range []struct {
		tag  string
		want bool
	}{
		{"latest", true},
		{"1.25.3-alpine", true},
		{"_private", true},
		{"V1", true},
		{"sha256_abc", true},
		{"a..b--c__d", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{"-bad", false},
		{".bad", false},
		{strings.Repeat("a", 129), false},
		{"a:b", false},
		{"a/b", false},
		{"a b", false},
		{"a+b", false},
		{"t\u00e4g", false},
	} {
		if got := upstream.ValidTag([]byte(tc.tag)); got != tc.want {
			t.Errorf("upstream.ValidTag(%q) = %v, want %v", tc.tag, got, tc.want)
		}
		if g := tagGrammar.MatchString(tc.tag); g != tc.want {
			t.Errorf("test table disagrees with the spec grammar on %q", tc.tag)
		}
	}
}

func TestValidTagMatchesGrammar(t *testing.T) {
	const alphabet = "aZ9_.-:/"
	var walk func(prefix []byte)
	walk = func(prefix []byte) {
		if len(prefix) > 0 {
			if got, want := upstream.ValidTag(prefix), tagGrammar.Match(prefix); got != want {
				t.Errorf("upstream.ValidTag(%q) = %v, grammar says %v", prefix, got, want)
			}
		}
		if len(prefix) == 5 {
			return
		}
		for i := 0; i < len(alphabet); i++ {
			walk(append(prefix, alphabet[i]))
		}
	}
	walk(make([]byte, 0, 5))
}

func TestDecodePath(t *testing.T) {
	for _, tc := range []struct {
		raw, want string
		refused   bool
	}{
		{raw: "/v2/library/nginx/manifests/latest", want: "/v2/library/nginx/manifests/latest"},
		{raw: "/v2/a%2db/manifests/latest", want: "/v2/a-b/manifests/latest"},
		{raw: "/v2/a%5Fb/manifests/latest", want: "/v2/a_b/manifests/latest"},
		{raw: "/v2/foo/manifests/sha256%3Aabc", want: "/v2/foo/manifests/sha256:abc"},
		{raw: "/v2/foo%2fbar/manifests/latest", refused: true},
		{raw: "/v2/foo%2Fbar/manifests/latest", refused: true},
		{raw: "/v2/%2e%2e/manifests/latest", refused: true},
		{raw: "/v2/%2E%2E/manifests/latest", refused: true},
		{raw: "/v2/foo%2e/manifests/latest", refused: true},
		{raw: "/v2/foo%5cbar/manifests/latest", refused: true},
		{raw: "/v2/foo%5Cbar/manifests/latest", refused: true},
		{raw: "/v2/foo%zz/manifests/latest", refused: true}, // malformed escape
		{raw: "/v2/foo%/manifests/latest", refused: true},   // truncated escape
	} {
		got, aerr := decodePath([]byte(tc.raw))
		switch {
		case tc.refused && aerr == nil:
			t.Errorf("decodePath(%q) = %q, want refusal", tc.raw, got)
		case tc.refused && (aerr.code.status != fasthttp.StatusBadRequest || aerr.code.code != "NAME_INVALID"):
			t.Errorf("decodePath(%q) refused with %d %s, want 400 NAME_INVALID", tc.raw, aerr.code.status, aerr.code)
		case !tc.refused && aerr != nil:
			t.Errorf("decodePath(%q): unexpected %v", tc.raw, aerr)
		case !tc.refused && string(got) != tc.want:
			t.Errorf("decodePath(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestLooksLikeHost(t *testing.T) {
	for _, tc := range []struct {
		seg  string
		want bool
	}{
		{"docker.io", true},
		{"ghcr.io", true},
		{"localhost", true},
		{"localhost:5000", true},
		{"127.0.0.1:1234", true},
		{"registry:5000", true},
		{"[::1]:5000", true},
		{"evil.example.com", true},
		{"library", false},
		{"hub", false},
		{"linuxserver", false},
		{"my-org", false},
		{"my_org", false},
		{"", false},
	} {
		if got := looksLikeHost([]byte(tc.seg)); got != tc.want {
			t.Errorf("looksLikeHost(%q) = %v, want %v", tc.seg, got, tc.want)
		}
	}
}

func TestValidHost(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"docker.io", true},
		{"registry-1.docker.io", true},
		{"Registry.Local", true},
		{"localhost", true},
		{"localhost:5000", true},
		{"127.0.0.1:1234", true},
		{"[::1]", true},
		{"[::1]:5000", true},
		{"[fe80::1]:80", true},
		{"..", false},
		{".", false},
		{"a..b", false},
		{".docker.io", false},
		{"docker.io.", false},
		{"-a.io", false},
		{"a-.io", false},
		{"a_b.io", false},
		{"a.io:", false},
		{"a.io:http", false},
		{"a.io:123456", false},
		{":5000", false},
		{"[::1", false},
		{"[127.0.0.1]", false},
		{"[]", false},
		{"", false},
	} {
		if got := validHost([]byte(tc.host)); got != tc.want {
			t.Errorf("validHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestAccepts(t *testing.T) {
	const (
		oci    = upstream.MediaTypeOCIManifest
		docker = upstream.MediaTypeDockerManifest
		list   = upstream.MediaTypeDockerList
	)
	for _, tc := range []struct {
		name    string
		headers []string
		mt      string
		want    bool
	}{
		{"no Accept admits everything", nil, oci, true},
		{"exact type", []string{oci}, oci, true},
		{"type missing", []string{docker}, oci, false},
		{"Watchtower-style list without OCI", []string{docker + ", " + list}, oci, false},
		{"type later in a list", []string{docker + ", " + oci}, oci, true},
		{"no spaces", []string{docker + "," + oci}, oci, true},
		{"parameters ignored", []string{oci + "; q=0.5"}, oci, true},
		{"parameters on an earlier item", []string{docker + ";q=0.9, " + oci + ";q=0.8"}, oci, true},
		{"wildcard", []string{"*/*"}, oci, true},
		{"containerd list ends in */*", []string{docker + ", " + list + ", */*"}, oci, true},
		{"application wildcard", []string{"application/*"}, oci, true},
		{"text wildcard does not admit", []string{"text/*"}, oci, false},
		{"second header line admits (Docker sends several)", []string{docker, oci}, oci, true},
		{"several header lines, none admit", []string{docker, list}, oci, false},
		{"prefix of a type is not the type", []string{"application/vnd.oci.image.manifest"}, oci, false},
		{"type with a suffix is not the type", []string{oci + "x"}, oci, false},
		{"empty header admits nothing", []string{""}, oci, false},
		{"blank items ignored", []string{" , ," + oci + ",,"}, oci, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hs [][]byte
			for _, h := range tc.headers {
				hs = append(hs, []byte(h))
			}
			if got := accepts(hs, tc.mt); got != tc.want {
				t.Errorf("accepts(%q, %s) = %v, want %v", tc.headers, tc.mt, got, tc.want)
			}
		})
	}
}

func TestNotAcceptedMessage(t *testing.T) {
	// The OCI-manifest wording is what distribution answers; clients show it to users.
	if got := notAcceptedMessage(upstream.MediaTypeOCIManifest); got != "OCI manifest found, but accept header does not support OCI manifests" {
		t.Errorf("OCI manifest message %q", got)
	}
	for _, mt := range []string{upstream.MediaTypeOCIIndex, upstream.MediaTypeDockerList, upstream.MediaTypeDockerManifest, "application/x-other"} {
		if got := notAcceptedMessage(mt); !strings.Contains(got, "accept header does not support") {
			t.Errorf("message for %s: %q", mt, got)
		}
	}
}

// routeProxy has a Docker Hub default with an alias, a second host-named upstream with an
// alias, and a host:port upstream, like the shipped config plus a private registry.
func routeProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := New(Options{
		Upstreams: []*Upstream{
			{Name: "docker.io", Aliases: []string{"hub", "index.docker.io"}, DockerHub: true},
			{Name: "ghcr.io", Aliases: []string{"gh"}},
			{Name: "Registry.Local:5000"},
		},
		Default: "docker.io",
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseRoute(t *testing.T) {
	p := routeProxy(t)
	long := strings.Repeat("a", 256)
	for _, tc := range []struct {
		path, ns string
		kind     Kind
		up       string // upstream name; "" for KindBase
		repo     string
		ref      string
		status   int // non-zero: an error is expected
		code     string
	}{
		{path: "/v2", kind: KindBase},
		{path: "/v2/", kind: KindBase},

		// default upstream
		{path: "/v2/library/nginx/manifests/latest", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/nginx/manifests/latest", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/linuxserver/nginx/manifests/1.25", kind: KindManifest, up: "docker.io", repo: "linuxserver/nginx", ref: "1.25"},
		{path: "/v2/nginx/tags/list", kind: KindTags, up: "docker.io", repo: "library/nginx"},
		{path: "/v2/nginx/blobs/sha256:" + strings.Repeat("a", 64), kind: KindBlob, up: "docker.io", repo: "library/nginx", ref: "sha256:" + strings.Repeat("a", 64)},
		{path: "/v2/nginx/manifests/sha256:" + strings.Repeat("b", 64), kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "sha256:" + strings.Repeat("b", 64)},

		// path prefix: name, alias, case-insensitive host, host:port
		{path: "/v2/docker.io/nginx/manifests/latest", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/hub/nginx/manifests/latest", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/index.docker.io/library/nginx/manifests/latest", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/ghcr.io/owner/app/manifests/v1", kind: KindManifest, up: "ghcr.io", repo: "owner/app", ref: "v1"},
		{path: "/v2/GHCR.IO/owner/app/manifests/v1", kind: KindManifest, up: "ghcr.io", repo: "owner/app", ref: "v1"},
		{path: "/v2/gh/owner/app/manifests/v1", kind: KindManifest, up: "ghcr.io", repo: "owner/app", ref: "v1"},
		{path: "/v2/ghcr.io/app/manifests/v1", kind: KindManifest, up: "ghcr.io", repo: "app", ref: "v1"}, // no library/ off Docker Hub
		{path: "/v2/registry.local:5000/team/app/manifests/v1", kind: KindManifest, up: "Registry.Local:5000", repo: "team/app", ref: "v1"},
		{path: "/v2/ghcr.io/owner/app/tags/list", kind: KindTags, up: "ghcr.io", repo: "owner/app"},

		// ns= (containerd), by name or alias, any case; ns wins over a prefix-looking path
		{path: "/v2/owner/app/manifests/v1", ns: "ghcr.io", kind: KindManifest, up: "ghcr.io", repo: "owner/app", ref: "v1"},
		{path: "/v2/owner/app/manifests/v1", ns: "gh", kind: KindManifest, up: "ghcr.io", repo: "owner/app", ref: "v1"},
		{path: "/v2/nginx/manifests/latest", ns: "docker.io", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/nginx/manifests/latest", ns: "HUB", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/library/nginx/manifests/latest", ns: "docker.io", kind: KindManifest, up: "docker.io", repo: "library/nginx", ref: "latest"},
		{path: "/v2/gh/app/manifests/v1", ns: "docker.io", kind: KindManifest, up: "docker.io", repo: "gh/app", ref: "v1"},

		// unknown registries: refused, never the default
		{path: "/v2/owner/app/manifests/v1", ns: "evil.example.com", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/evil.example.com/foo/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/localhost:1234/foo/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/localhost/foo/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/127.0.0.1/foo/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/169.254.169.254/latest/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/evil.example.com/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/[::1]:5000/foo/manifests/latest", status: 404, code: "NAME_UNKNOWN"},
		{path: "/v2/ghcr.io/manifests/latest", status: 400, code: "NAME_INVALID"},  // a registry but no repository
		{path: "/v2/a..b/foo/manifests/latest", status: 400, code: "NAME_INVALID"}, // malformed, not merely unknown
		{path: "/v2/localhost:http/foo/manifests/latest", status: 400, code: "NAME_INVALID"},

		// invalid names
		{path: "/v2/Library/Nginx/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/foo/../bar/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/../manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/foo%2fbar/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/%2e%2e/foo/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/" + long + "/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/ghcr.io/" + long + "/manifests/latest", status: 400, code: "NAME_INVALID"},
		{path: "/v2/foo//bar/manifests/latest", status: 400, code: "NAME_INVALID"},

		// invalid references
		{path: "/v2/nginx/manifests/-bad", status: 400, code: "TAG_INVALID"},
		{path: "/v2/nginx/manifests/" + strings.Repeat("t", 129), status: 400, code: "TAG_INVALID"},
		{path: "/v2/nginx/manifests/a/b", status: 400, code: "TAG_INVALID"},
		{path: "/v2/nginx/manifests/", status: 400, code: "TAG_INVALID"},
		{path: "/v2/nginx/manifests/sha256:zzz", status: 400, code: "DIGEST_INVALID"},
		{path: "/v2/nginx/manifests/sha256:" + strings.Repeat("a", 63), status: 400, code: "DIGEST_INVALID"},
		{path: "/v2/nginx/blobs/latest", status: 400, code: "DIGEST_INVALID"},

		// not an endpoint
		{path: "/v2/nginx", status: 404, code: "ENDPOINT_UNKNOWN"},
		{path: "/v2/nginx/referrers/sha256:" + strings.Repeat("a", 64), status: 404, code: "ENDPOINT_UNKNOWN"},
		{path: "/v2/_catalog", status: 404, code: "ENDPOINT_UNKNOWN"},
	} {
		name := tc.path
		if tc.ns != "" {
			name += "?ns=" + tc.ns
		}
		if len(name) > 120 {
			name = name[:120]
		}
		t.Run(name, func(t *testing.T) {
			r, aerr := p.parseRoute([]byte(tc.path), []byte(tc.ns))
			if aerr == nil && r.Kind != KindBase {
				aerr = checkNames(&r) // what serveV2 does before anything can go upstream
			}
			if tc.status != 0 {
				if aerr == nil {
					t.Fatalf("routed to %+v, want %d %s", r, tc.status, tc.code)
				}
				if aerr.code.status != tc.status || aerr.code.code != tc.code {
					t.Fatalf("got %d %s (%s), want %d %s", aerr.code.status, aerr.code, aerr.message, tc.status, tc.code)
				}
				return
			}
			if aerr != nil {
				t.Fatalf("unexpected %v", aerr)
			}
			gotUp := ""
			if r.Upstream != nil {
				gotUp = r.Upstream.Name
			}
			if r.Kind != tc.kind || gotUp != tc.up || r.Repo != tc.repo || r.Ref != tc.ref {
				t.Fatalf("got kind %d upstream %q repo %q ref %q, want %d %q %q %q", r.Kind, gotUp, r.Repo, r.Ref, tc.kind, tc.up, tc.repo, tc.ref)
			}
		})
	}
}

func TestNewRefusesDuplicateNamesAndUnknownDefault(t *testing.T) {
	if _, err := New(Options{Upstreams: []*Upstream{{Name: "a.io", Aliases: []string{"x"}}, {Name: "b.io", Aliases: []string{"X"}}}, Default: "a.io"}); err == nil {
		t.Error("an alias used twice (case-insensitively) was accepted")
	}
	if _, err := New(Options{Upstreams: []*Upstream{{Name: "a.io"}}, Default: "b.io"}); err == nil {
		t.Error("a default that is no upstream was accepted")
	}
}

// TestLookupLongName: names longer than lookup's stack buffer are simply unknown.
func TestLookupLongName(t *testing.T) {
	p := routeProxy(t)
	if u := p.lookup([]byte(strings.Repeat("A", 200) + ".io")); u != nil {
		t.Fatalf("long name found %s", u.Name)
	}
	if u := p.lookup([]byte("DOCKER.IO")); u == nil || u.Name != "docker.io" {
		t.Fatalf("upper-case lookup: %v", u)
	}
}
