package proxy

// Native fuzz targets for everything in this package that reads bytes a client sent: the
// /v2/ path and its ns= query, the Accept header, the digest API's image reference and
// platform (and the index it picks a platform from), and the Authorization header.
//
// Each target checks invariants, not only the absence of panics. Run one with e.g.
//
//	go test -run XXX -fuzz '^FuzzParseRoute$' -fuzztime 60s ./proxy
//
// scripts/fuzz.sh runs them all in turn; checked-in seeds live in testdata/fuzz/<target>/.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/bcrypt"

	"regcache/cache"
	"regcache/upstream"
)

// The distribution spec's own grammars, which the hand-written checkers must agree with.
var (
	fuzzNameGrammar = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	fuzzTagGrammar  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// fuzzProxy is a Proxy as the shipped config builds it (Docker Hub default with aliases) plus
// a host:port upstream and a short alias on a second registry. It has no cache: the targets
// only reach code that runs before a lookup.
func fuzzProxy(f *testing.F) *Proxy {
	f.Helper()
	p, err := New(Options{
		Upstreams: []*Upstream{
			{Name: "docker.io", Aliases: []string{"hub", "index.docker.io", "registry-1.docker.io"}, DockerHub: true},
			{Name: "ghcr.io", Aliases: []string{"gh"}},
			{Name: "lscr.io"},
			{Name: "Registry.Local:5000"},
		},
		Default: "docker.io",
	})
	if err != nil {
		f.Fatal(err)
	}
	return p
}

const fuzzDigest = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"

// FuzzParseRoute: the router and the name gate in front of every upstream request.
//
// Invariants: a route that passes checkNames names a configured upstream, a repository that
// satisfies the spec grammar (also after library/ is added) and a valid tag or digest, and
// the decoded path is exactly /v2/[prefix/]<repo>/<endpoint>[/<ref>] (nothing dropped or
// smuggled); an unknown host-like first segment, or an unknown ns=, never yields an upstream.
func FuzzParseRoute(f *testing.F) {
	p := fuzzProxy(f)
	for _, s := range [][2]string{
		{"", ""},
		{"library/nginx/manifests/latest", ""},
		{"nginx/manifests/latest", ""},
		{"hub/nginx/manifests/latest", ""},
		{"lscr.io/linuxserver/nginx/manifests/latest", ""},
		{"ghcr.io/home-assistant/home-assistant/tags/list", ""},
		{"GHCR.IO/owner/app/blobs/" + fuzzDigest, ""},
		{"registry.local:5000/team/app/manifests/v1.2.3", ""},
		{"linuxserver/nginx/manifests/latest", "lscr.io"},
		{"nginx/manifests/" + fuzzDigest, "docker.io"},
		{"owner/app/manifests/v1", "evil.example.com"},
		{"evil.example.com/foo/manifests/latest", ""},
		{"[::1]:5000/foo/manifests/latest", ""},
		{"169.254.169.254/latest/manifests/latest", ""},
		{"foo%2fbar/manifests/latest", ""},
		{"%2e%2e/foo/manifests/latest", ""},
		{"foo%252fbar/manifests/latest", ""},
		{"a/manifests/b/manifests/c", ""},
		{"localhost/x/tags/list", ""},
		{"_catalog", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, suffix, ns string) {
		// The handler sends only /v2 and /v2/... here (Handler's switch).
		raw := []byte("/v2/" + suffix)
		r, aerr := p.parseRoute(raw, []byte(ns))
		defer r.release()
		if aerr != nil {
			if r.Upstream != nil {
				t.Fatalf("error %v with an upstream", aerr)
			}
			return
		}
		if r.Kind == KindBase {
			if r.Upstream != nil || r.Repo != "" {
				t.Fatalf("base route with %+v", r)
			}
			return
		}
		if r.Kind != KindManifest && r.Kind != KindTags && r.Kind != KindBlob {
			t.Fatalf("unknown kind %d", r.Kind)
		}
		if r.Upstream == nil {
			t.Fatal("routed without an upstream")
		}
		decoded, derr := decodePath(raw)
		if derr != nil {
			t.Fatalf("route from a path decodePath refuses: %v", derr)
		}
		// The name as the client wrote it, recomputed with strings.
		rest := strings.TrimPrefix(string(decoded), "/v2/")
		var name string
		switch r.Kind {
		case KindManifest:
			name = rest[:strings.LastIndex(rest, "/manifests/")]
		case KindBlob:
			name = rest[:strings.LastIndex(rest, "/blobs/")]
		case KindTags:
			name = strings.TrimSuffix(rest, "/tags/list")
		}
		wantUp, wantRepo, prefix := p.def, name, ""
		if ns != "" {
			wantUp = p.lookup([]byte(ns))
			if wantUp == nil {
				t.Fatalf("unknown ns=%q routed to %s", ns, r.Upstream.Name)
			}
		} else {
			first, rest, hasRest := strings.Cut(name, "/")
			up := p.lookup([]byte(first))
			if looksLikeHost([]byte(first)) && (up == nil || !hasRest) {
				t.Fatalf("host-like %q (configured: %v) with repository %q routed to %s", first, up != nil, rest, r.Upstream.Name)
			}
			if up != nil && hasRest {
				wantUp, wantRepo, prefix = up, rest, first
			}
		}
		if r.Upstream != wantUp || string(r.rawRepo) != wantRepo {
			t.Fatalf("name %q ns %q routed to %s %q, want %s %q", name, ns, r.Upstream.Name, r.rawRepo, wantUp.Name, wantRepo)
		}
		if aerr := checkNames(&r); aerr != nil {
			return
		}
		// What may now go upstream.
		if !upstream.ValidRepository(r.rawRepo) || len(r.rawRepo) > maxNameLength || !fuzzNameGrammar.Match(r.rawRepo) {
			t.Fatalf("checkNames passed repository %q", r.rawRepo)
		}
		if !upstream.ValidRepository([]byte(r.Repo)) {
			t.Fatalf("upstream repository %q is invalid", r.Repo)
		}
		want := string(r.rawRepo)
		if r.Upstream.DockerHub && !strings.Contains(want, "/") {
			want = "library/" + want
		}
		if r.Repo != want {
			t.Fatalf("Repo %q from raw %q", r.Repo, r.rawRepo)
		}
		var endpoint string
		switch r.Kind {
		case KindManifest:
			endpoint = "/manifests/" + r.Ref
			if _, err := digest.Parse(r.Ref); err != nil && !fuzzTagGrammar.MatchString(r.Ref) {
				t.Fatalf("checkNames passed reference %q", r.Ref)
			}
		case KindBlob:
			endpoint = "/blobs/" + r.Ref
			if _, err := digest.Parse(r.Ref); err != nil {
				t.Fatalf("checkNames passed blob digest %q", r.Ref)
			}
		case KindTags:
			endpoint = "/tags/list"
		}
		rebuilt := "/v2/"
		if prefix != "" {
			rebuilt += prefix + "/"
		}
		rebuilt += string(r.rawRepo) + endpoint
		if rebuilt != string(decoded) {
			t.Fatalf("path %q routed as %q", decoded, rebuilt)
		}
	})
}

// FuzzDecodePath: the unescaping of the path. Invariants: a path without escapes comes back
// unchanged; an accepted one decodes as url.PathUnescape does and never gains a '/', '.' or
// '\' that the client did not write literally.
func FuzzDecodePath(f *testing.F) {
	for _, s := range []string{
		"/v2/library/nginx/manifests/latest",
		"/v2/foo%2fbar/manifests/latest",
		"/v2/%2E%2E/x",
		"/v2/a%5cb",
		"/v2/a%20b/manifests/%41",
		"/v2/%zz",
		"/v2/%",
		"/v2/foo%252fbar",
		"/v2/caf%C3%A9/tags/list",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in := bytes.Clone(raw)
		out, aerr := decodePath(raw)
		if !bytes.Equal(in, raw) {
			t.Fatal("decodePath changed its input")
		}
		if aerr != nil {
			if bytes.IndexByte(raw, '%') < 0 {
				t.Fatalf("refused %q, which has no escape", raw)
			}
			return
		}
		if bytes.IndexByte(raw, '%') < 0 && !bytes.Equal(out, raw) {
			t.Fatalf("%q changed to %q without an escape", raw, out)
		}
		want, err := url.PathUnescape(string(raw))
		if err != nil || want != string(out) {
			t.Fatalf("decodePath(%q) = %q, PathUnescape: %q, %v", raw, out, want, err)
		}
		for _, c := range []byte{'/', '.', '\\'} {
			if bytes.Count(out, []byte{c}) != bytes.Count(raw, []byte{c}) {
				t.Fatalf("decodePath(%q) = %q: the number of %q changed", raw, out, c)
			}
		}
	})
}

// FuzzValidNames: the hand-written checkers against the spec's regular expressions, and
// validHost against the reference grammar's domain (without the cases this code decides
// differently on purpose: ports over 5 digits, bracketed forms netip judges).
func FuzzValidNames(f *testing.F) {
	for _, s := range []string{
		"library/nginx", "linuxserver/nginx", "a0.b1-c2_d3__e4", "foo___bar", "foo/", "Nginx",
		"latest", "v1.2.3-rc.1", "_x", ".x", strings.Repeat("t", 128), strings.Repeat("t", 129),
		"ghcr.io", "registry.local:5000", "[::1]:5000", "[fe80::1%eth0]", "a..b", "-a.io", "localhost:http",
		"xn--bcher-kva.example", "1.2.3.4:65535", "a.io:123456",
	} {
		f.Add(s)
	}
	domain := regexp.MustCompile(`^(?:` + reference.DomainRegexp.String() + `)$`)
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		if got, want := upstream.ValidRepository(b), fuzzNameGrammar.MatchString(s); got != want {
			t.Fatalf("upstream.ValidRepository(%q) = %v, grammar says %v", s, got, want)
		}
		if got, want := upstream.ValidTag(b), fuzzTagGrammar.MatchString(s); got != want {
			t.Fatalf("upstream.ValidTag(%q) = %v, grammar says %v", s, got, want)
		}
		host := validHost(b)
		if host {
			for _, c := range b {
				ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-:[]%", c) >= 0
				if !ok {
					t.Fatalf("validHost(%q) accepted byte %q", s, c)
				}
			}
		}
		if !strings.ContainsAny(s, "[]") {
			portOK := true
			if i := strings.LastIndexByte(s, ':'); i >= 0 && len(s)-i-1 > 5 {
				portOK = false
			}
			if portOK && host != domain.MatchString(s) {
				t.Fatalf("validHost(%q) = %v, reference domain grammar says %v", s, host, !host)
			}
		}
	})
}

// FuzzAccepts: Accept matching. Invariants: it agrees with a plain model (split every header
// at commas, drop parameters and blanks, exact type or a wildcard admits); no header admits
// everything; several headers admit what any one of them admits; joining two headers with a
// comma admits exactly what the two admit; */* always admits.
func FuzzAccepts(f *testing.F) {
	for _, s := range [][3]string{
		{upstream.MediaTypeDockerManifest + ", " + upstream.MediaTypeDockerList, "", upstream.MediaTypeOCIManifest},
		{upstream.MediaTypeOCIIndex + ";q=0.9", upstream.MediaTypeDockerList, upstream.MediaTypeOCIIndex},
		{"*/*", "", upstream.MediaTypeOCIManifest},
		{"application/*", "text/*", upstream.MediaTypeDockerManifest},
		{" , ," + upstream.MediaTypeOCIManifest + ",,", "", upstream.MediaTypeOCIManifest},
		// containerd's Accept
		{upstream.MediaTypeDockerManifest + ", " + upstream.MediaTypeDockerList + ", " + upstream.MediaTypeOCIManifest + ", " + upstream.MediaTypeOCIIndex + ", */*", "", upstream.MediaTypeOCIIndex},
	} {
		f.Add(s[0], s[1], s[2])
	}
	model := func(headers []string, mt string) bool {
		if len(headers) == 0 {
			return true
		}
		for _, h := range headers {
			for _, item := range strings.Split(h, ",") {
				item, _, _ = strings.Cut(item, ";")
				item = strings.TrimSpace(item)
				if item == "" {
					continue
				}
				if item == mt || item == "*/*" || item == "application/*" {
					return true
				}
			}
		}
		return false
	}
	f.Fuzz(func(t *testing.T, h1, h2, mt string) {
		if mt == "" {
			return // a manifest always has a media type (verifyManifest)
		}
		one := accepts([][]byte{[]byte(h1)}, mt)
		two := accepts([][]byte{[]byte(h2)}, mt)
		both := accepts([][]byte{[]byte(h1), []byte(h2)}, mt)
		if one != model([]string{h1}, mt) {
			t.Fatalf("accepts(%q, %q) = %v, model says %v", h1, mt, one, !one)
		}
		if both != (one || two) {
			t.Fatalf("two headers %q, %q: %v, alone %v and %v", h1, h2, both, one, two)
		}
		if joined := accepts([][]byte{[]byte(h1 + "," + h2)}, mt); joined != both {
			t.Fatalf("%q joined with %q: %v, as two headers %v", h1, h2, joined, both)
		}
		if !accepts(nil, mt) {
			t.Fatal("no Accept refused")
		}
		if !accepts([][]byte{[]byte(h1 + ", */*")}, mt) {
			t.Fatalf("%q plus */* refused %q", h1, mt)
		}
		if strings.TrimSpace(mt) == mt && !strings.ContainsAny(mt, ",;") && mt != "" && !accepts([][]byte{[]byte(h1 + "," + mt + "; q=0.5")}, mt) {
			t.Fatalf("%q listed and refused", mt)
		}
	})
}

// fuzzKnownVariant leaves out a limitation of containerd/platforms (v1.0.0-rc.5): Only()
// of an arm64 platform whose variant is not in its arm64 table (v8, v8.1-v8.9, v9,
// v9.1-v9.7) matches nothing, not even that platform, so the digest API answers 404 for
// e.g. linux/arm64/v10 even when an index lists exactly that.
func fuzzKnownVariant(p ocispec.Platform) bool {
	return p.Architecture != "arm64" || fuzzArm64Variants.MatchString(p.Variant)
}

var fuzzArm64Variants = regexp.MustCompile(`^(|v8(\.[0-9])?|v9(\.[0-7])?)$`)

// FuzzDigestReference: the pure part of the digest API (lookupDigest before the cache): the
// image reference and the platform. Invariants: what parses yields a repository and tag or
// digest the /v2/ name gate would accept (the digest API asks upstream without going through
// checkNames); an unconfigured registry is refused before anything else; a parsed platform
// matches itself, so an index that lists it exactly is always found (see pickPlatform); an
// unparsable reference or platform is a 400.
func FuzzDigestReference(f *testing.F) {
	p := fuzzProxy(f)
	for _, s := range [][2]string{
		{"nginx", ""},
		{"nginx:1.27", "linux/amd64"},
		{"lscr.io/linuxserver/nginx:latest", "linux/arm64"},
		{"ghcr.io/home-assistant/home-assistant:2024.1", "linux/arm/v7"},
		{"registry-1.docker.io/nginx", "arm64"},
		{"hub/nginx", "windows/amd64"},
		{"library/nginx@" + fuzzDigest, "linux/arm64/v8"},
		{"quay.io/prometheus/node-exporter:v1.8.2", "linux/ppc64le"},
		{"evil.example.com/x", ""},
		{"NGINX", "linux/AMD64"},
		{"nginx:latest@" + fuzzDigest, "windows(10.0.17763)/amd64"},
		{"localhost:5000/a/b:c", "linux/*"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, image, platform string) {
		named, rerr := reference.ParseNormalizedNamed(image)
		var plat *ocispec.Platform
		perr := error(nil)
		if platform != "" {
			var pl ocispec.Platform
			if pl, perr = platforms.Parse(platform); perr == nil {
				pl = platforms.Normalize(pl)
				// Numbered variants no architecture has (above maxVariant) are bad input
				// too, refused with 400 before the image is looked at.
				major, _, _ := strings.Cut(strings.TrimPrefix(pl.Variant, "v"), ".")
				if n, err := strconv.Atoi(major); err == nil && (n < 0 || n > maxVariant) {
					perr = fmt.Errorf("variant %s", pl.Variant)
				}
			}
			if perr == nil {
				plat = &pl
				m := platforms.Only(pl)
				if !m.Match(pl) && fuzzKnownVariant(pl) {
					t.Fatalf("platform %q (%+v) does not match itself", platform, pl)
				}
				// (No round trip through Format: it joins with path.Join, so "0/." formats
				// as "0". The answer only reports the platform, as the image states it.)
				_ = platforms.Format(pl)
			}
		}
		if rerr != nil || perr != nil || image == "" {
			// lookupDigest answers 400 without touching the cache.
			_, aerr := p.lookupDigest(detached, image, platform, time.Now())
			if aerr == nil || aerr.code.status != fasthttp.StatusBadRequest {
				t.Fatalf("image %q platform %q: %v, want 400", image, platform, aerr)
			}
			return
		}
		domain, path := reference.Domain(named), reference.Path(named)
		up := p.lookup([]byte(domain))
		if up == nil {
			_, aerr := p.lookupDigest(detached, image, platform, time.Now())
			if aerr == nil || aerr.code != errNameUnknown {
				t.Fatalf("unconfigured registry %q: %v, want 404 NAME_UNKNOWN", domain, aerr)
			}
			return
		}
		repo := path
		if up.DockerHub && !strings.Contains(repo, "/") {
			repo = "library/" + repo
		}
		if !upstream.ValidRepository([]byte(path)) || !upstream.ValidRepository([]byte(repo)) || len(path) > maxNameLength {
			t.Fatalf("image %q gives repository %q, which /v2/ would refuse", image, repo)
		}
		if tagged, ok := named.(reference.Tagged); ok && !upstream.ValidTag([]byte(tagged.Tag())) {
			t.Fatalf("image %q gives tag %q", image, tagged.Tag())
		}
		if d, ok := named.(reference.Digested); ok {
			if err := d.Digest().Validate(); err != nil {
				t.Fatalf("image %q gives digest %q: %v", image, d.Digest(), err)
			}
		}
		if plat != nil && fuzzKnownVariant(*plat) {
			// An index that lists exactly this platform answers with that manifest.
			idx, _ := json.Marshal(ocispec.Index{Manifests: []ocispec.Descriptor{{MediaType: upstream.MediaTypeOCIManifest, Digest: fuzzDigest, Size: 1, Platform: plat}}})
			d, _, aerr := p.pickPlatform(detached, up, repo, cache.Answer{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: fuzzDigest}, Body: idx}, *plat)
			if aerr != nil || d != fuzzDigest {
				t.Fatalf("platform %q not found in an index listing it: %v", platform, aerr)
			}
		}
	})
}

// FuzzPickPlatform: reading an upstream index for the digest API's platform field. Invariants:
// a chosen manifest is one the index lists with a platform the asked one matches, and no
// better match is skipped; nothing is chosen only when nothing matches; a body that is no
// JSON is a 502.
func FuzzPickPlatform(f *testing.F) {
	p := fuzzProxy(f)
	up := p.lookup([]byte("docker.io"))
	for _, s := range []struct {
		body     string
		platform string
		list     bool
	}{
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1effc9d48232693f4584ceb9c5e8d84ddeb5924ea4aff341aa8204510422f668","size":556,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:7e87ffc91b9ceafa85be2777b16b1be10e4664fd4f3acc86e4295b97da5163ba","size":556,"platform":{"architecture":"arm64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:43089316cfeec5c2f7897591f5925167afda21932cf71a1a1264684930e7b40a","size":394,"annotations":{"vnd.docker.reference.digest":"sha256:1effc9d48232693f4584ceb9c5e8d84ddeb5924ea4aff341aa8204510422f668","vnd.docker.reference.type":"attestation-manifest"},"platform":{"architecture":"unknown","os":"unknown"}}]}`, "linux/arm64", false},
		{`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1570,"digest":"sha256:11ab6f3b1f3b2c6b5a1bb4e2f06e9a79a0f2c8b2d2a0bd4f6d9db7cf86a6dd39","platform":{"architecture":"arm","os":"linux","variant":"v7"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":1570,"digest":"sha256:22ab6f3b1f3b2c6b5a1bb4e2f06e9a79a0f2c8b2d2a0bd4f6d9db7cf86a6dd39","platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}`, "linux/arm/v6", true},
		{`{"manifests":[{"digest":"sha256:33","platform":{"architecture":"amd64","os":"windows","os.version":"10.0.17763.6189"}}]}`, "windows/amd64", false},
		{`{"manifests":[{"digest":"x"},{"platform":null}]}`, "linux/amd64", false},
		{`not json`, "linux/amd64", true},
	} {
		f.Add([]byte(s.body), s.platform, s.list)
	}
	f.Fuzz(func(t *testing.T, body []byte, platform string, list bool) {
		// The platform passes the gate every client platform passes: parsePlatform refuses
		// variants that make containerd's matcher list millions of compatible platforms (the
		// input linux/arm/66666611 in testdata took 82 s and gigabytes before it did).
		pl, aerr := parsePlatform(platform)
		if aerr != nil {
			if parsed, err := platforms.Parse(platform); err == nil {
				// Refused though containerd parses it: only for an out-of-range variant.
				v := strings.TrimPrefix(platforms.Normalize(parsed).Variant, "v")
				if n, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0]); err != nil || (n >= 0 && n <= maxVariant) {
					t.Fatalf("parsePlatform(%q) refused a platform with variant %q: %s", platform, v, aerr.message)
				}
			}
			return
		}
		mt := upstream.MediaTypeOCIIndex
		if list {
			mt = upstream.MediaTypeDockerList
		}
		a := cache.Answer{Descriptor: upstream.Descriptor{MediaType: mt, Digest: fuzzDigest}, Body: body}
		d, got, aerr := p.pickPlatform(detached, up, "library/x", a, pl)
		var idx ocispec.Index
		if jerr := json.Unmarshal(body, &idx); jerr != nil {
			if aerr == nil || aerr.code.status != fasthttp.StatusBadGateway {
				t.Fatalf("invalid index: %v, want 502", aerr)
			}
			return
		}
		m := platforms.Only(pl)
		var matching []ocispec.Descriptor
		for _, desc := range idx.Manifests {
			if desc.Platform != nil && m.Match(platforms.Normalize(*desc.Platform)) {
				matching = append(matching, desc)
			}
		}
		if aerr != nil {
			if aerr.code.status != fasthttp.StatusNotFound || len(matching) > 0 {
				t.Fatalf("%v, though %d manifests match %s", aerr, len(matching), platforms.Format(pl))
			}
			return
		}
		found := false
		for _, desc := range matching {
			if desc.Digest == d && platforms.Format(*desc.Platform) == platforms.Format(got) {
				found = true
			}
			if m.Less(platforms.Normalize(*desc.Platform), platforms.Normalize(got)) {
				t.Fatalf("chose %s although %s ranks higher for %s", platforms.Format(got), platforms.Format(*desc.Platform), platforms.Format(pl))
			}
		}
		if !found {
			t.Fatalf("chose %s (%s), which the index does not list as matching %s", d, platforms.Format(got), platforms.Format(pl))
		}
	})
}

// fuzzAuth is client auth on, with one htpasswd user (a cheap bcrypt cost, also for the
// unknown-user comparison) and one static token, on a fixed clock.
func fuzzAuth(f *testing.F) *ClientAuth {
	f.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	a, err := NewClientAuth(ClientAuthOptions{
		Users:    map[string]string{"alice": string(h)},
		Tokens:   []string{"static-token-0123456789"},
		Secret:   []byte("fuzz-secret-0123456789abcdef0123456789"),
		TokenTTL: 5 * time.Minute,
	})
	if err != nil {
		f.Fatal(err)
	}
	a.dummyHash = h // the real one costs ~50 ms per unknown user; the fuzzer needs speed
	now := time.Unix(1_700_000_000, 0)
	a.now = func() time.Time { return now }
	return a
}

// FuzzVerifyToken: issued tokens. Invariants: a token that verifies is byte for byte what
// issueToken makes for its claims (payload "." signature in canonical base64url), is not
// expired, and was signed with our key; a token we issued verifies and names its subject;
// changing any byte of an issued token makes it fail.
func FuzzVerifyToken(f *testing.F) {
	a := fuzzAuth(f)
	tok, _ := a.issueToken("alice")
	f.Add(tok, "alice", uint16(0), byte(0))
	f.Add(tok, "token", uint16(len(tok)-1), byte(1))
	f.Add(tok, "anonymous", uint16(10), byte(0x20))
	f.Add("eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "", uint16(3), byte(0xff))
	f.Add("Og==", "x", uint16(1), byte(2))
	f.Add(".", "", uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, raw, sub string, pos uint16, flip byte) {
		enc := base64.RawURLEncoding
		// Whatever was sent: only what sign made may pass.
		if c, err := a.verifyToken([]byte(raw)); err == nil {
			payload, _, _ := strings.Cut(raw, ".")
			if want := payload + "." + enc.EncodeToString(a.sign([]byte(payload))); raw != want {
				t.Fatalf("verified %q, which is not the canonical token %q", raw, want)
			}
			if a.now().Unix() >= c.Exp {
				t.Fatalf("verified an expired token (exp %d)", c.Exp)
			}
		}
		// A token issued now verifies, for its subject.
		issued, _ := a.issueToken(sub)
		c, err := a.verifyToken([]byte(issued))
		var wantSub string // what JSON carries (invalid UTF-8 becomes U+FFFD)
		js, _ := json.Marshal(sub)
		_ = json.Unmarshal(js, &wantSub)
		payload, _, _ := strings.Cut(issued, ".")
		if len(payload) <= 512 {
			if err != nil || c.Sub != wantSub {
				t.Fatalf("issued token for %q: %+v, %v", sub, c, err)
			}
		} else if err == nil {
			t.Fatalf("issued token with a %d-byte payload verified", len(payload))
		}
		// Tampering with any byte makes it fail.
		if flip != 0 {
			b := []byte(issued)
			b[int(pos)%len(b)] ^= flip
			if _, err := a.verifyToken(b); err == nil {
				t.Fatalf("tampered token %q (from %q) verified", b, issued)
			}
		}
	})
}

// FuzzCheck: the Authorization header with auth on. Invariants: a header passes only as the
// static token (Bearer, or as a Basic password), as alice's right password, or as a token
// verifyToken accepts, with the matching subject; the answer does not change when asked
// again (the verification cache never turns a refusal into a pass, or back).
func FuzzCheck(f *testing.F) {
	a := fuzzAuth(f)
	tok, _ := a.issueToken("alice")
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	for _, s := range []string{
		"", "Bearer " + tok, "bearer  " + tok + " ", "Bearer static-token-0123456789", "BEARER static-token-0123456789x",
		basic("alice", "s3cret"), basic("alice", "wrong"), basic("bob", "s3cret"), basic("x", "static-token-0123456789"),
		"Basic " + base64.StdEncoding.EncodeToString([]byte("alice")), "Basic !!!", "Bearer Og==", "Digest foo", "Basic",
		"Bearer " + tok + "=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		sub, ok := a.check([]byte(h))
		if sub2, ok2 := a.check([]byte(h)); sub2 != sub || ok2 != ok {
			t.Fatalf("check(%q): %q %v, then %q %v", h, sub, ok, sub2, ok2)
		}
		if !ok {
			if sub != "" {
				t.Fatalf("refused with subject %q", sub)
			}
			return
		}
		scheme, cred, _ := strings.Cut(h, " ")
		cred = strings.TrimSpace(cred)
		switch {
		case strings.EqualFold(scheme, "Bearer"):
			if cred == "static-token-0123456789" {
				if sub != "token" {
					t.Fatalf("static token as %q", sub)
				}
				return
			}
			c, err := a.verifyToken([]byte(cred))
			if err != nil || c.Sub != sub {
				t.Fatalf("Bearer %q passed as %q; verifyToken: %+v, %v", cred, sub, c, err)
			}
		case strings.EqualFold(scheme, "Basic"):
			dec, err := base64.StdEncoding.DecodeString(cred)
			if err != nil {
				t.Fatalf("Basic %q passed as %q but is no base64: %v", cred, sub, err)
			}
			user, pass, _ := strings.Cut(string(dec), ":")
			switch {
			case pass == "static-token-0123456789" && sub == "token":
			case user == "alice" && pass == "s3cret" && sub == "alice":
			default:
				t.Fatalf("Basic %q:%q passed as %q", user, pass, sub)
			}
		default:
			t.Fatalf("scheme %q passed as %q", scheme, sub)
		}
		if sum := sha256.Sum256([]byte(h)); sub != "" {
			if got, ok := a.verified.get(sum, a.now()); !ok || got != sub {
				t.Fatalf("a pass was not remembered: %q %v", got, ok)
			}
		}
	})
}
