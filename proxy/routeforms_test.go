package proxy

import (
	"net/url"
	"strings"
	"testing"
)

func TestV2Path(t *testing.T) {
	p := routeProxy(t)
	for _, tc := range []struct {
		path, v2, link string
		code           string // an error's code; v2 is then unused
	}{
		// the /v2/ form and the fixed endpoints pass as sent
		{path: "/v2/", v2: "/v2/", link: "/v2/"},
		{path: "/v2", v2: "/v2", link: "/v2"},
		{path: "/v2/hub/nginx/tags/list", v2: "/v2/hub/nginx/tags/list", link: "/v2/hub/nginx/tags/list"},
		{path: "/healthz", v2: "/healthz", link: "/healthz"},
		{path: "/token", v2: "/token", link: "/token"},
		{path: "/", v2: "/", link: "/"},

		// What's Up Docker with a trailing slash on its URL: only the leading "//" collapses
		{path: "//v2/", v2: "/v2/", link: "/v2/"},
		{path: "//v2", v2: "/v2", link: "/v2"},
		{path: "//v2/lscr.io/linuxserver/nginx/tags/list", v2: "/v2/lscr.io/linuxserver/nginx/tags/list", link: "/v2/lscr.io/linuxserver/nginx/tags/list"},
		{path: "///v2/", v2: "///v2/", link: "///v2/"},
		{path: "//v2x/", v2: "//v2x/", link: "//v2x/"},
		{path: "//hub/v2/", v2: "//hub/v2/", link: "//hub/v2/"},

		// /<upstream>/v2/...: Renovate's form, by name or alias, any case
		{path: "/hub/v2/", v2: "/v2/", link: "/hub/v2/"},
		{path: "/hub/v2", v2: "/v2", link: "/hub/v2"},
		{path: "/ghcr.io/v2/", v2: "/v2/", link: "/ghcr.io/v2/"},
		{path: "/hub/v2/alpine/manifests/3.19", v2: "/v2/hub/alpine/manifests/3.19", link: "/hub/v2/alpine/manifests/3.19"},
		{path: "/HUB/v2/alpine/tags/list", v2: "/v2/HUB/alpine/tags/list", link: "/HUB/v2/alpine/tags/list"},
		{path: "/ghcr.io/v2/owner/app/blobs/sha256:x", v2: "/v2/ghcr.io/owner/app/blobs/sha256:x", link: "/ghcr.io/v2/owner/app/blobs/sha256:x"},
		{path: "/registry.local:5000/v2/team/app/tags/list", v2: "/v2/registry.local:5000/team/app/tags/list", link: "/registry.local:5000/v2/team/app/tags/list"},
		// an unknown host is routed as /v2/<host>/... is: refused by the router, never the default
		{path: "/evil.example.com/v2/foo/manifests/latest", v2: "/v2/evil.example.com/foo/manifests/latest", link: "/evil.example.com/v2/foo/manifests/latest"},
		{path: "/evil.example.com/v2/", code: "NAME_UNKNOWN"},
		{path: "/a..b/v2/", code: "NAME_INVALID"},
		// not an upstream, nor a host: unknown, as before
		{path: "/foo/v2/bar/manifests/latest", v2: "/foo/v2/bar/manifests/latest", link: "/foo/v2/bar/manifests/latest"},
		{path: "/hub/v2x/alpine/manifests/latest", v2: "/hub/v2x/alpine/manifests/latest", link: "/hub/v2x/alpine/manifests/latest"},
		{path: "/hub/v3/", v2: "/hub/v3/", link: "/hub/v3/"},
		{path: "/hub", v2: "/hub", link: "/hub"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			v2, link, s, aerr := p.v2Path([]byte(tc.path))
			if s != nil {
				defer scratchPool.Put(s)
			}
			if tc.code != "" {
				if aerr == nil || aerr.code.code != tc.code {
					t.Fatalf("got %q, %v; want %s", v2, aerr, tc.code)
				}
				return
			}
			if aerr != nil || string(v2) != tc.v2 || string(link) != tc.link {
				t.Fatalf("got %q link %q err %v; want %q link %q", v2, link, aerr, tc.v2, tc.link)
			}
		})
	}
}

// TestUpstreamFirstRoutesAsPrefix: every /v2/<upstream>/<rest> route in the table of
// TestParseRoute-like paths routes the same as /<upstream>/v2/<rest>, errors included.
func TestUpstreamFirstRoutesAsPrefix(t *testing.T) {
	p := routeProxy(t)
	for _, seg := range []string{"hub", "docker.io", "GHCR.IO", "gh", "ghcr.io", "registry.local:5000", "evil.example.com", "localhost:1234",
		"hu%62", "ghcr%2Eio"} { // escaped, as the /v2/<upstream>/ form reads them decoded
		for _, rest := range []string{
			"nginx/manifests/latest", "library/nginx/manifests/latest", "owner/app/tags/list",
			"nginx/blobs/sha256:" + strings.Repeat("a", 64), "manifests/latest", "Nginx/manifests/latest",
			"../manifests/latest", "foo%2fbar/manifests/latest", "nginx/manifests/-bad", "nginx", "_catalog",
		} {
			want, werr := p.parseRoute([]byte("/v2/"+seg+"/"+rest), nil)
			v2, _, s, aerr := p.v2Path([]byte("/" + seg + "/v2/" + rest))
			if aerr != nil {
				t.Fatalf("%s %s: %v", seg, rest, aerr)
			}
			got, gerr := p.parseRoute(v2, nil)
			if (werr == nil) != (gerr == nil) || werr != nil && (werr.code != gerr.code || werr.message != gerr.message) {
				t.Errorf("/%s/v2/%s: error %v, /v2/%s/%s: %v", seg, rest, gerr, seg, rest, werr)
			} else if got.Kind != want.Kind || got.Upstream != want.Upstream || got.Repo != want.Repo || got.Ref != want.Ref {
				t.Errorf("/%s/v2/%s routed %+v, /v2/%s/%s %+v", seg, rest, got, seg, rest, want)
			}
			got.release()
			want.release()
			if s != nil {
				scratchPool.Put(s)
			}
		}
	}
}

// FuzzV2Path: the mapping of client paths onto the /v2/ form. Invariants: a /v2/ path and
// any path that is neither //v2 nor /<upstream-or-host>/v2 pass unchanged; //v2... loses
// exactly its first slash; /<seg>/v2/<rest> becomes /v2/<seg>/<rest> only for a configured
// upstream or a host-like seg, and then routes exactly as that path does; the link is the
// client's path (less a doubled leading slash).
func FuzzV2Path(f *testing.F) {
	p := fuzzProxy(f)
	for _, s := range []string{
		"/v2/", "//v2/", "//v2", "///v2/", "/hub/v2/", "/hub/v2", "/hub/v2/alpine/manifests/3.19",
		"/lscr.io/v2/linuxserver/nginx/tags/list", "/evil.example.com/v2/", "/evil.example.com/v2/x/tags/list",
		"/a..b/v2/", "/foo/v2/bar/manifests/latest", "/hub/v2x/", "/healthz", "/", "", "/Registry.Local:5000/v2/a/blobs/" + fuzzDigest,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		v2, link, s, aerr := p.v2Path([]byte(path))
		if s != nil {
			defer scratchPool.Put(s)
		}
		switch {
		case strings.HasPrefix(path, "/v2/"):
			if aerr != nil || string(v2) != path || string(link) != path {
				t.Fatalf("%q changed to %q %q %v", path, v2, link, aerr)
			}
		case path == "//v2" || strings.HasPrefix(path, "//v2/"):
			if aerr != nil || string(v2) != path[1:] || string(link) != path[1:] {
				t.Fatalf("%q became %q %q %v", path, v2, link, aerr)
			}
		default:
			seg, after, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
			name := seg // as the /v2/<upstream>/ form reads it
			if strings.Contains(seg, "%") {
				d, err := url.PathUnescape(seg)
				if err != nil {
					d = "\x00" // no name
				}
				name = d
			}
			upstreamFirst := strings.HasPrefix(path, "/") && (after == "v2" || strings.HasPrefix(after, "v2/")) &&
				(p.lookup([]byte(name)) != nil || looksLikeHost([]byte(name)))
			if !upstreamFirst {
				if aerr != nil || string(v2) != path || string(link) != path {
					t.Fatalf("%q changed to %q %q %v", path, v2, link, aerr)
				}
				return
			}
			if string(link) != path {
				t.Fatalf("link %q for %q", link, path)
			}
			if aerr != nil {
				if p.lookup([]byte(name)) != nil || len(after) > 3 {
					t.Fatalf("%q refused: %v", path, aerr)
				}
				return
			}
			if len(after) <= 3 {
				if string(v2) != "/"+after {
					t.Fatalf("base %q became %q", path, v2)
				}
				return
			}
			want := "/v2/" + seg + after[2:]
			if string(v2) != want {
				t.Fatalf("%q became %q, want %q", path, v2, want)
			}
			got, gerr := p.parseRoute(v2, nil)
			defer got.release()
			ref, rerr := p.parseRoute([]byte(want), nil)
			defer ref.release()
			if (gerr == nil) != (rerr == nil) || got.Kind != ref.Kind || got.Upstream != ref.Upstream || got.Repo != ref.Repo || got.Ref != ref.Ref {
				t.Fatalf("%q routed %+v %v, %q %+v %v", path, got, gerr, want, ref, rerr)
			}
		}
	})
}
