package main

// End-to-end tests of routing, clients and upstreams as a client meets them (ns=, path prefix,
// default upstream, library/), refusals that never reach a registry, the read-only API,
// Accept handling, upstream auth, redirects and the access log. Every registry is a real
// go-containerregistry registry on 127.0.0.1 (upstream/registrytest). Helpers in this file
// are prefixed "pe".

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// peErr reads the first registry error of an answer.
func peErr(t testing.TB, r harness.Response) (code, message string) {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("status %d: body %q is no registry error", r.Status, r.Body)
	}
	return body.Errors[0].Code, body.Errors[0].Message
}

// peWantErr checks a registry error answer; for HEAD (no body) only the status.
func peWantErr(t testing.TB, what string, r harness.Response, status int, code string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: status %d, want %d (body %s)", what, r.Status, status, r.Body)
	}
	if r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("%s: no Docker-Distribution-API-Version on the error", what)
	}
	if len(r.Body) == 0 {
		return
	}
	if got, msg := peErr(t, r); got != code {
		t.Fatalf("%s: code %s (%s), want %s", what, got, msg, code)
	}
}

// peRaw sends a request line exactly as given (Go's client would re-encode some paths) and
// reads the answer.
func peRaw(t testing.TB, in *harness.Instance, method, target string, header ...string) harness.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(in.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: regcache.test\r\nConnection: close\r\n", method, target)
	for i := 0; i+1 < len(header); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", header[i], header[i+1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return harness.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// peNoTraffic fails when any registry was contacted.
func peNoTraffic(t testing.TB, what string, regs ...*registrytest.Registry) {
	t.Helper()
	for i, reg := range regs {
		if n := reg.Total(); n != 0 {
			t.Fatalf("%s: registry %d received %d requests, want none", what, i, n)
		}
	}
}

// peTranscript keeps every answer a test received, to look for secrets in them.
type peTranscript struct{ b strings.Builder }

func (tr *peTranscript) add(r harness.Response) harness.Response {
	for k, vs := range r.Header {
		fmt.Fprintf(&tr.b, "%s: %s\n", k, strings.Join(vs, ", "))
	}
	tr.b.Write(r.Body)
	tr.b.WriteByte('\n')
	return r
}

// peNoSecrets fails when any secret occurs in the logs or the answers.
func peNoSecrets(t testing.TB, in *harness.Instance, tr *peTranscript, secrets ...string) {
	t.Helper()
	logs := in.Logs.String()
	answers := tr.b.String()
	for _, s := range secrets {
		if s == "" {
			t.Fatal("empty secret: the test would prove nothing")
		}
		if strings.Contains(logs, s) {
			t.Errorf("secret %.6s... appears in regcache's logs", s)
		}
		if strings.Contains(answers, s) {
			t.Errorf("secret %.6s... appears in an answer to the client", s)
		}
	}
	if len(logs) == 0 {
		t.Error("no logs at all: the leak check proves nothing")
	}
}

// peBasic is how a Basic Authorization header carries user:pass.
func peBasic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// peRecorder remembers what reached a registry's fault hook and then lets the registry
// answer (or hands over to next).
type peRecorder struct {
	mu   sync.Mutex
	seen []peSeen
}

type peSeen struct {
	Method, Path, Auth string
	Accept             []string
}

func (rec *peRecorder) fault(next registrytest.Fault) registrytest.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		rec.mu.Lock()
		rec.seen = append(rec.seen, peSeen{r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Values("Accept")})
		rec.mu.Unlock()
		return next != nil && next(w, r)
	}
}

// manifests returns the manifest requests seen.
func (rec *peRecorder) manifests() []peSeen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []peSeen
	for _, s := range rec.seen {
		if strings.Contains(s.Path, "/manifests/") {
			out = append(out, s)
		}
	}
	return out
}

// --- 1. Routing ----------------------------------------------------------------------

func TestRoutingThreeForms(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.Bearer)
	hub := registrytest.New(t, registrytest.Bearer)
	quay := registrytest.New(t, registrytest.NoAuth)
	dDef := def.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	dHub := hub.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	dQuay := quay.PushImage(t, "team/app", "v1", types.DockerManifestSchema2).Digest
	dQuayOne := quay.PushImage(t, "app", "v1", types.DockerManifestSchema2).Digest
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("docker.io", hub.URL, "aliases: [hub]"),
		harness.Upstream("quay.test:5000", quay.URL, "aliases: [q]"),
	))

	for _, tc := range []struct {
		path, want string
		reg        *registrytest.Registry
	}{
		// default upstream
		{"/v2/team/app/manifests/v1", dDef, def},
		// path prefix by name, alias, any case, host:port
		{"/v2/registry.test/team/app/manifests/v1", dDef, def},
		{"/v2/docker.io/team/app/manifests/v1", dHub, hub},
		{"/v2/hub/team/app/manifests/v1", dHub, hub},
		{"/v2/DOCKER.IO/team/app/manifests/v1", dHub, hub},
		{"/v2/quay.test:5000/team/app/manifests/v1", dQuay, quay},
		{"/v2/q/team/app/manifests/v1", dQuay, quay},
		{"/v2/q/app/manifests/v1", dQuayOne, quay}, // no library/ off Docker Hub
		// containerd's ns=, by name or alias
		{"/v2/team/app/manifests/v1?ns=docker.io", dHub, hub},
		{"/v2/team/app/manifests/v1?ns=hub", dHub, hub},
		{"/v2/team/app/manifests/v1?ns=quay.test:5000", dQuay, quay},
		{"/v2/team/app/manifests/v1?ns=Quay.Test:5000", dQuay, quay},
		{"/v2/team/app/manifests/v1?ns=registry.test", dDef, def},
		{"/v2/app/manifests/v1?ns=q", dQuayOne, quay},
	} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			before := tc.reg.Total()
			r := rc.Do(t, method, tc.path)
			if r.Status != http.StatusOK {
				t.Fatalf("%s %s: %d %s", method, tc.path, r.Status, r.Body)
			}
			if got := r.Header.Get("Docker-Content-Digest"); got != tc.want {
				t.Fatalf("%s %s: digest %s, want %s: routed to the wrong upstream", method, tc.path, got, tc.want)
			}
			if r.Header.Get("X-Cache") == "MISS" && tc.reg.Total() == before {
				t.Fatalf("%s %s: a MISS that did not reach the expected registry", method, tc.path)
			}
		}
	}
	// Each registry was asked only for what lives on it.
	for name, reg := range map[string]*registrytest.Registry{"default": def, "hub": hub, "quay": quay} {
		if reg.Count(http.MethodHead, "manifest")+reg.Count(http.MethodGet, "manifest") == 0 {
			t.Errorf("%s registry never reached", name)
		}
	}
}

func TestRoutingDockerHubAddsLibraryInEveryForm(t *testing.T) {
	t.Parallel()
	hub := registrytest.New(t, registrytest.Bearer)
	var rec peRecorder
	hub.SetFault(rec.fault(nil))
	forms := []string{
		"/v2/nginx/manifests/t0",              // default upstream (Docker daemon registry-mirrors)
		"/v2/library/nginx/manifests/t1",      // already qualified: no library/library/
		"/v2/docker.io/nginx/manifests/t2",    // path prefix by name
		"/v2/hub/nginx/manifests/t3",          // Renovate-style alias, no library/
		"/v2/nginx/manifests/t4?ns=docker.io", // containerd
		"/v2/nginx/manifests/t5?ns=hub",       // containerd with the alias
		"/v2/docker.io/library/nginx/manifests/t6",
	}
	digests := map[string]string{}
	for i := range forms {
		tag := fmt.Sprintf("t%d", i)
		digests[tag] = hub.PushImage(t, "library/nginx", tag, types.DockerManifestSchema2).Digest
	}
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", hub.URL, "aliases: [hub]")))
	for i, path := range forms {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != digests[fmt.Sprintf("t%d", i)] {
			t.Fatalf("GET %s: %d %s %s", path, r.Status, r.Header.Get("Docker-Content-Digest"), r.Body)
		}
	}
	seen := rec.manifests()
	if len(seen) != len(forms) {
		t.Fatalf("%d manifest requests upstream for %d lookups: %+v", len(seen), len(forms), seen)
	}
	for _, s := range seen {
		if !strings.HasPrefix(s.Path, "/v2/library/nginx/manifests/t") {
			t.Errorf("upstream was asked for %s %s, want /v2/library/nginx/...", s.Method, s.Path)
		}
	}
}

func TestRoutingRefusesUnknownRegistries(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.NoAuth)
	hub := registrytest.New(t, registrytest.NoAuth)
	def.PushImage(t, "foo", "latest", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("docker.io", hub.URL, "aliases: [hub]")))
	for _, path := range []string{
		"/v2/foo/manifests/latest?ns=evil.example.com",
		"/v2/library/foo/manifests/latest?ns=localhost:1234",
		"/v2/foo/manifests/latest?ns=" + def.Host, // the upstream's address is not one of its names
		"/v2/evil.example.com/foo/manifests/latest",
		"/v2/localhost:1234/foo/manifests/latest",
		"/v2/localhost/foo/manifests/latest",
		"/v2/169.254.169.254/latest/manifests/latest",
		"/v2/" + def.Host + "/foo/manifests/latest",
		"/v2/[::1]:5000/foo/manifests/latest",
		"/v2/evil.example.com/foo/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/evil.example.com/foo/tags/list",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			peWantErr(t, method+" "+path, peRaw(t, rc, method, path), http.StatusNotFound, "NAME_UNKNOWN")
		}
	}
	peNoTraffic(t, "unknown registries", def, hub)
}

func TestRoutingRejectsInvalidNamesAndReferences(t *testing.T) {
	t.Parallel()
	def := registrytest.New(t, registrytest.NoAuth)
	other := registrytest.New(t, registrytest.NoAuth)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("registry.test", def.URL),
		harness.Upstream("other.test", other.URL, "aliases: [o]")))
	for _, tc := range []struct{ path, code string }{
		{"/v2/Library/Nginx/manifests/latest", "NAME_INVALID"},
		{"/v2/library/NGINX/manifests/latest?ns=other.test", "NAME_INVALID"},
		{"/v2/o/Team/app/manifests/latest", "NAME_INVALID"},
		{"/v2/../manifests/latest", "NAME_INVALID"},
		{"/v2/foo/../bar/manifests/latest", "NAME_INVALID"},
		{"/v2/other.test/../../v2/x/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%2fbar/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%2Fbar/manifests/latest", "NAME_INVALID"},
		{"/v2/%2e%2e/foo/manifests/latest", "NAME_INVALID"},
		{"/v2/o/%2E%2E/manifests/latest", "NAME_INVALID"},
		{"/v2/foo%5cbar/manifests/latest", "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/latest", "NAME_INVALID"},
		{"/v2/o/" + strings.Repeat("b", 256) + "/manifests/latest", "NAME_INVALID"},
		{"/v2/foo/manifests/-bad", "TAG_INVALID"},
		{"/v2/foo/manifests/" + strings.Repeat("t", 129), "TAG_INVALID"},
		{"/v2/foo/manifests/sha256:zzz", "DIGEST_INVALID"},
		{"/v2/foo/manifests/sha256:" + strings.Repeat("A", 64), "DIGEST_INVALID"},
		{"/v2/foo/blobs/latest", "DIGEST_INVALID"},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			peWantErr(t, method+" "+tc.path, peRaw(t, rc, method, tc.path), http.StatusBadRequest, tc.code)
		}
	}
	// The longest valid name and tag still route.
	def.PushImage(t, strings.Repeat("n", 255), strings.Repeat("T", 128), types.OCIManifestSchema1)
	if r := rc.Do(t, http.MethodHead, "/v2/"+strings.Repeat("n", 255)+"/manifests/"+strings.Repeat("T", 128)); r.Status != http.StatusOK {
		t.Fatalf("255-character name, 128-character tag: %d", r.Status)
	}
	def.ResetCounts()
	peNoTraffic(t, "invalid names", def, other)
}

// --- 2. The API root and read-only methods ---------------------------------------------

func TestBaseEndpointAndReadOnly(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	d := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1).Digest
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL)))
	reg.ResetCounts()

	for _, path := range []string{"/v2/", "/v2"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			// Without Authorization the ping is challenged (client auth off or not: clients
			// find the token realm this way; Diun takes 200 or 401, Renovate needs the
			// challenge); with any Authorization it answers 200.
			r := rc.Do(t, method, path)
			if r.Status != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s %s without Authorization: %d %v, want 401 with a challenge", method, path, r.Status, r.Header)
			}
			r = rc.Do(t, method, path, "Authorization", "Bearer Og==")
			if r.Status != http.StatusOK || r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Fatalf("%s %s: %d %v", method, path, r.Status, r.Header)
			}
			if r.Header.Get("WWW-Authenticate") != "" {
				t.Fatalf("%s %s asks for credentials", method, path)
			}
		}
	}
	if r := rc.Do(t, http.MethodGet, "/v2/", "Authorization", "Bearer Og=="); string(r.Body) != "{}" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /v2/ body %q type %q", r.Body, r.Header.Get("Content-Type"))
	}
	for _, method := range []string{http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{
			"/v2/team/app/manifests/v1",
			"/v2/team/app/manifests/" + d,
			"/v2/team/app/blobs/" + d,
			"/v2/team/app/blobs/uploads/",
			"/v2/registry.test/team/app/manifests/v1",
			"/v2/team/app/manifests/v1?ns=registry.test",
			"/v2/",
		} {
			r := rc.Do(t, method, path)
			peWantErr(t, method+" "+path, r, http.StatusMethodNotAllowed, "UNSUPPORTED")
			if allow := r.Header.Get("Allow"); allow != "GET, HEAD" {
				t.Fatalf("%s %s: Allow %q, want \"GET, HEAD\" (RFC 9110 §15.5.6)", method, path, allow)
			}
		}
	}
	peNoTraffic(t, "read-only methods", reg)
	// And the manifest is still there and unchanged.
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1"); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("after the refused writes: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
	}
}

// --- 3. Accept -------------------------------------------------------------------------

// peFourTypes checks that an upstream request's Accept lines name all four manifest types.
func peFourTypes(t testing.TB, s peSeen) {
	t.Helper()
	var got []string
	for _, line := range s.Accept {
		for _, item := range strings.Split(line, ",") {
			got = append(got, strings.TrimSpace(strings.Split(item, ";")[0]))
		}
	}
	for _, mt := range []string{upstream.MediaTypeDockerList, upstream.MediaTypeOCIIndex, upstream.MediaTypeDockerManifest, upstream.MediaTypeOCIManifest} {
		if !slices.Contains(got, mt) {
			t.Fatalf("%s %s went upstream with Accept %q, missing %s", s.Method, s.Path, s.Accept, mt)
		}
	}
}

func TestAcceptUpstreamAlwaysFourTypesAndLenientByDefault(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	var rec peRecorder
	reg.SetFault(rec.fault(nil))
	oci := reg.PushImage(t, "team/app", "oci", types.OCIManifestSchema1)
	idx := reg.PushIndex(t, "team/app", "idx", types.OCIImageIndex, "linux/amd64")
	docker := reg.PushImage(t, "team/app", "docker", types.DockerManifestSchema2)
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL)))

	const watchtower = upstream.MediaTypeDockerManifest // an old client: no OCI, no lists
	for _, tc := range []struct {
		tag    string
		pushed registrytest.Pushed
	}{{"oci", oci}, {"idx", idx}, {"docker", docker}} {
		// HEAD by tag (upstream HEAD), GET by tag (upstream GET by digest), GET by digest.
		for _, step := range []struct{ method, ref string }{
			{http.MethodHead, tc.tag}, {http.MethodGet, tc.tag}, {http.MethodGet, tc.pushed.Digest},
		} {
			r := rc.Do(t, step.method, "/v2/team/app/manifests/"+step.ref, "Accept", watchtower)
			if r.Status != http.StatusOK {
				t.Fatalf("%s %s with Accept %s: %d %s", step.method, step.ref, watchtower, r.Status, r.Body)
			}
			// Lenient: the real type, whatever the client said it accepts.
			if ct := r.Header.Get("Content-Type"); ct != tc.pushed.MediaType {
				t.Fatalf("%s %s: Content-Type %s, want the manifest's own %s", step.method, step.ref, ct, tc.pushed.MediaType)
			}
			if r.Header.Get("Docker-Content-Digest") != tc.pushed.Digest {
				t.Fatalf("%s %s: digest %s", step.method, step.ref, r.Header.Get("Docker-Content-Digest"))
			}
			if step.method == http.MethodGet && string(r.Body) != string(tc.pushed.Body) {
				t.Fatalf("GET %s: body differs from upstream's bytes", step.ref)
			}
		}
	}
	// Clients with no Accept, or only a wildcard, change nothing upstream either.
	other := reg.PushImage(t, "team/other", "v1", types.OCIManifestSchema1)
	if r := rc.Do(t, http.MethodGet, "/v2/team/other/manifests/v1"); r.Status != http.StatusOK || r.Header.Get("Content-Type") != other.MediaType {
		t.Fatalf("no Accept: %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	if r := rc.Do(t, http.MethodHead, "/v2/team/other/manifests/"+reg.PushImage(t, "team/other", "v2", types.DockerManifestSchema2).Digest, "Accept", "*/*"); r.Status != http.StatusOK {
		t.Fatalf("*/* by digest: %d", r.Status)
	}

	seen := rec.manifests()
	if len(seen) < 8 {
		t.Fatalf("only %d manifest requests reached upstream: %+v", len(seen), seen)
	}
	methods := map[string]bool{}
	for _, s := range seen {
		peFourTypes(t, s)
		methods[s.Method] = true
	}
	if !methods[http.MethodHead] || !methods[http.MethodGet] {
		t.Fatalf("want both HEAD and GET checked upstream, saw %v", methods)
	}
}

func TestAcceptStrict(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	oci := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	idx := reg.PushIndex(t, "team/app", "multi", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL, "strict_accept: true")))
	const (
		dockerOnly = upstream.MediaTypeDockerManifest
		ociMsg     = "OCI manifest found, but accept header does not support OCI manifests"
	)
	refs := []string{"v1", oci.Digest}

	for _, ref := range refs {
		path := "/v2/team/app/manifests/" + ref
		r := rc.Do(t, http.MethodGet, path, "Accept", dockerOnly)
		peWantErr(t, "GET "+ref+" docker-only", r, http.StatusNotFound, "MANIFEST_UNKNOWN")
		if _, msg := peErr(t, r); msg != ociMsg {
			t.Fatalf("message %q, want %q", msg, ociMsg)
		}
		peWantErr(t, "HEAD "+ref+" docker-only", rc.Do(t, http.MethodHead, path, "Accept", dockerOnly), http.StatusNotFound, "MANIFEST_UNKNOWN")
		// Several Accept lines, as Docker sends them, none of them OCI.
		peWantErr(t, "two lines without OCI", rc.Do(t, http.MethodGet, path, "Accept", dockerOnly, "Accept", upstream.MediaTypeDockerList),
			http.StatusNotFound, "MANIFEST_UNKNOWN")

		for _, accept := range [][]string{
			{"Accept", "*/*"},
			{"Accept", upstream.MediaTypeOCIManifest},
			{"Accept", dockerOnly + ", " + upstream.MediaTypeOCIManifest + ";q=0.5"},
			{"Accept", dockerOnly, "Accept", upstream.MediaTypeDockerList, "Accept", upstream.MediaTypeOCIManifest}, // the last line admits
			{"Accept", dockerOnly, "Accept", "*/*"},
			{}, // no Accept at all
		} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				r := rc.Do(t, method, path, accept...)
				if r.Status != http.StatusOK || r.Header.Get("Content-Type") != oci.MediaType || r.Header.Get("Docker-Content-Digest") != oci.Digest {
					t.Fatalf("%s %s with %q: %d %s %s", method, ref, accept, r.Status, r.Header.Get("Content-Type"), r.Body)
				}
			}
		}
	}
	// An index wants its own type named.
	peWantErr(t, "index, manifest types only", rc.Do(t, http.MethodGet, "/v2/team/app/manifests/multi", "Accept", dockerOnly, "Accept", upstream.MediaTypeOCIManifest),
		http.StatusNotFound, "MANIFEST_UNKNOWN")
	if r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/multi", "Accept", dockerOnly, "Accept", upstream.MediaTypeOCIIndex); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != idx.Digest {
		t.Fatalf("index with its type accepted: %d", r.Status)
	}
	// A refusal is about the client, not the manifest: the manifest is cached all the same,
	// so dozens of refused and served requests cost at most two upstream requests per tag.
	if n := reg.Count(http.MethodGet, "manifest") + reg.Count(http.MethodHead, "manifest"); n > 4 {
		t.Fatalf("%d manifest requests upstream for 2 tags", n)
	}
}

// --- 4. Auth ---------------------------------------------------------------------------

func TestAuthBearerAnonymousReusesToken(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	const n = 6
	var digests []string
	for i := 0; i < n; i++ {
		digests = append(digests, reg.PushImage(t, "team/app", fmt.Sprintf("v%d", i), types.OCIManifestSchema1).Digest)
	}
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.test", reg.URL)))
	var tr peTranscript
	for i := 0; i < n; i++ {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := tr.add(rc.Do(t, method, fmt.Sprintf("/v2/team/app/manifests/v%d", i)))
			if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != digests[i] {
				t.Fatalf("%s v%d: %d %s", method, i, r.Status, r.Body)
			}
		}
	}
	if got := reg.Count(http.MethodGet, "token"); got != 1 {
		t.Fatalf("%d manifests in one repository cost %d token requests, want 1", n, got)
	}
	// Every manifest request upstream went out with the token; none paid a 401 round trip.
	if got, want := reg.Count(http.MethodHead, "manifest")+reg.Count(http.MethodGet, "manifest"), 2*n; got != want {
		t.Fatalf("%d manifest requests upstream, want %d", got, want)
	}
	reg.PushImage(t, "team/other", "v1", types.OCIManifestSchema1)
	if r := tr.add(rc.Do(t, http.MethodGet, "/v2/team/other/manifests/v1")); r.Status != http.StatusOK {
		t.Fatalf("second repository: %d", r.Status)
	}
	if got := reg.Count(http.MethodGet, "token"); got != 2 {
		t.Fatalf("a second repository brought the token requests to %d, want 2 (one per scope)", got)
	}
	tokens := reg.IssuedTokens()
	if len(tokens) != 2 {
		t.Fatalf("issued tokens %d", len(tokens))
	}
	peNoSecrets(t, rc, &tr, tokens...)
}

// peCredsYAML is a credentials block whose password comes from the environment.
func peCredsYAML(user, env string) []string {
	return []string{"credentials:", "  username: " + user, "  password: ${" + env + "}"}
}

func TestAuthBearerBasicWithCredentialsFromEnv(t *testing.T) {
	// t.Setenv: not parallel.
	reg := registrytest.New(t, registrytest.BearerBasic)
	d := reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2).Digest
	t.Setenv("REGCACHE_E2E_PASSWORD", reg.Password)
	rc := startRegcache(t, harness.Config("", harness.Upstream("private.test", reg.URL, peCredsYAML(reg.Username, "REGCACHE_E2E_PASSWORD")...)))
	var tr peTranscript
	for _, method := range []string{http.MethodHead, http.MethodGet, http.MethodGet} {
		r := tr.add(rc.Do(t, method, "/v2/private/app/manifests/v1"))
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s: %d %s", method, r.Status, r.Body)
		}
	}
	if got := reg.Count(http.MethodGet, "token"); got != 1 {
		t.Fatalf("%d token requests, want 1", got)
	}
	// The token endpoint really checked the credentials regcache sent.
	if !slices.Contains(reg.AuthHeaders(), "Basic "+peBasic(reg.Username, reg.Password)) {
		t.Fatal("the token endpoint never saw the configured credentials")
	}
	peNoSecrets(t, rc, &tr, append(reg.IssuedTokens(), reg.Password, peBasic(reg.Username, reg.Password))...)
}

// TestAuthBearerBasicWrongCredentialsRefused: a token endpoint that refuses the configured
// credentials is an outage of the upstream, 502 UNAVAILABLE naming the token endpoint, not
// a 403 about the image; refusing anonymous access is 403 DENIED, an answer about the
// repository; no secret shows anywhere.
func TestAuthBearerBasicWrongCredentialsRefused(t *testing.T) {
	reg := registrytest.New(t, registrytest.BearerBasic)
	reg.PushImage(t, "private/app", "v1", types.DockerManifestSchema2)
	const wrong = "not-the-password-7f3a9c"
	t.Setenv("REGCACHE_E2E_WRONG", wrong)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("private.test", reg.URL, peCredsYAML(reg.Username, "REGCACHE_E2E_WRONG")...),
		harness.Upstream("anon.test", reg.URL)))
	var tr peTranscript
	const path = "/v2/private/app/manifests/v1"
	r := tr.add(rc.Do(t, http.MethodGet, path))
	peWantErr(t, path, r, http.StatusBadGateway, "UNAVAILABLE")
	if _, msg := peErr(t, r); !strings.Contains(msg, "by the token endpoint") {
		t.Fatalf("%s: message %q does not say the token endpoint refused", path, msg)
	}
	peWantErr(t, "HEAD "+path, tr.add(rc.Do(t, http.MethodHead, path)), http.StatusBadGateway, "UNAVAILABLE")
	peWantErr(t, "anonymous", tr.add(rc.Do(t, http.MethodGet, "/v2/anon.test/private/app/manifests/v1")), http.StatusForbidden, "DENIED")
	if len(reg.IssuedTokens()) != 0 {
		t.Fatal("a token was issued for wrong or missing credentials")
	}
	peNoSecrets(t, rc, &tr, wrong, peBasic(reg.Username, wrong), reg.Password)
}

func TestAuthBasicUpstream(t *testing.T) {
	reg := registrytest.New(t, registrytest.Basic)
	d := reg.PushImage(t, "private/app", "v1", types.OCIManifestSchema1).Digest
	t.Setenv("REGCACHE_E2E_BASIC", reg.Password)
	rc := startRegcache(t, harness.Config("",
		harness.Upstream("basic.test", reg.URL, peCredsYAML(reg.Username, "REGCACHE_E2E_BASIC")...),
		harness.Upstream("anon.test", reg.URL)))
	var tr peTranscript
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		r := tr.add(rc.Do(t, method, "/v2/private/app/manifests/v1"))
		if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d {
			t.Fatalf("%s with credentials: %d %s", method, r.Status, r.Body)
		}
	}
	if reg.Count(http.MethodGet, "token") != 0 {
		t.Fatal("a Basic upstream was asked for a token")
	}
	peWantErr(t, "anonymous", tr.add(rc.Do(t, http.MethodGet, "/v2/anon.test/private/app/manifests/v1")), http.StatusForbidden, "DENIED")
	peNoSecrets(t, rc, &tr, reg.Password, peBasic(reg.Username, reg.Password))
}

// --- 5. Upstream redirects -----------------------------------------------------------------

func TestUpstreamRedirectFollowedHEADKeptAuthorizationDropped(t *testing.T) {
	t.Parallel()
	near := registrytest.New(t, registrytest.Bearer)
	far := registrytest.New(t, registrytest.NoAuth) // another port: another origin
	pushed := near.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	var farRec, nearRec peRecorder
	far.SetFault(farRec.fault(registrytest.Serve(pushed.MediaType, pushed.Digest, pushed.Body)))
	near.SetFault(nearRec.fault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, far.URL+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	})))
	rc := startRegcache(t, harness.Config("", harness.Upstream("near.test", near.URL)))
	var tr peTranscript

	h := tr.add(rc.Do(t, http.MethodHead, "/v2/team/app/manifests/v1"))
	if h.Status != http.StatusOK || h.Header.Get("Docker-Content-Digest") != pushed.Digest {
		t.Fatalf("HEAD through a redirect: %d %v", h.Status, h.Header)
	}
	g := tr.add(rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1"))
	if g.Status != http.StatusOK || string(g.Body) != string(pushed.Body) {
		t.Fatalf("GET through a redirect: %d %s", g.Status, g.Body)
	}
	farSeen := farRec.manifests()
	if len(farSeen) != 2 || farSeen[0].Method != http.MethodHead || farSeen[1].Method != http.MethodGet {
		t.Fatalf("far side saw %+v, want HEAD (kept a HEAD) then GET", farSeen)
	}
	for _, s := range farSeen {
		if s.Auth != "" {
			t.Fatalf("Authorization %q crossed to another host", s.Auth)
		}
		peFourTypes(t, s) // the Accept set survives the hop
	}
	if len(far.AuthHeaders()) != 0 {
		t.Fatalf("far side received Authorization: %q", far.AuthHeaders())
	}
	nearSeen := nearRec.manifests()
	if len(nearSeen) != 2 {
		t.Fatalf("near side saw %+v", nearSeen)
	}
	for _, s := range nearSeen {
		if !strings.HasPrefix(s.Auth, "Bearer ") {
			t.Fatalf("the upstream itself got %s without its token", s.Method)
		}
	}
	peNoSecrets(t, rc, &tr, near.IssuedTokens()...)
}

func TestUpstreamRedirectTargetCannotSteerCredentials(t *testing.T) {
	near := registrytest.New(t, registrytest.BearerBasic)
	far := registrytest.New(t, registrytest.NoAuth)
	near.PushImage(t, "private/app", "v1", types.OCIManifestSchema1)
	thief := registrytest.New(t, registrytest.NoAuth)
	// The redirect target answers with a challenge naming somebody else's token endpoint.
	far.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+thief.URL+`/token",service="cdn"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	near.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, far.URL+r.URL.Path, http.StatusTemporaryRedirect)
		return true
	}))
	t.Setenv("REGCACHE_E2E_STEER", near.Password)
	rc := startRegcache(t, harness.Config("", harness.Upstream("near.test", near.URL, peCredsYAML(near.Username, "REGCACHE_E2E_STEER")...)))
	var tr peTranscript
	r := tr.add(rc.Do(t, http.MethodGet, "/v2/private/app/manifests/v1"))
	peWantErr(t, "redirect target wants auth", r, http.StatusForbidden, "DENIED")
	if thief.Total() != 0 {
		t.Fatalf("the realm a redirect target named was contacted %d times (Authorization %q)", thief.Total(), thief.AuthHeaders())
	}
	peNoSecrets(t, rc, &tr, near.Password, peBasic(near.Username, near.Password))
}

// peLoopbackDialer lets regcache dial 127.0.0.1 only, recording anything else it tried.
type peLoopbackDialer struct {
	mu      sync.Mutex
	refused []string
}

func (d *peLoopbackDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		d.mu.Lock()
		d.refused = append(d.refused, addr)
		d.mu.Unlock()
		return nil, errors.New("test dialer: only loopback may be dialled")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// peStartWithDialer wires regcache as build does, for one upstream, but with a dialer the
// test controls (build has no way to take one), and serves it on 127.0.0.1.
func peStartWithDialer(t *testing.T, name, url string, dial func(context.Context, string, string) (net.Conn, error)) *harness.Instance {
	t.Helper()
	return startRegcacheWith(t, harness.Config("  negative_ttl: 1s\n", harness.Upstream(name, url, "timeout: 5s")),
		harness.Options{Dial: dial})
}

func TestUpstreamRedirectToMetadataServiceRefusedWithoutDialling(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	targets := []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://[fd00:ec2::254]/latest/meta-data/",
		"http://10.0.0.1:2375/containers/json",
	}
	var mu sync.Mutex
	target := targets[0]
	reg.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		to := target
		mu.Unlock()
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		return true
	}))
	var dial peLoopbackDialer
	rc := peStartWithDialer(t, "registry.test", reg.URL, dial.DialContext)
	for _, to := range targets {
		mu.Lock()
		target = to
		mu.Unlock()
		r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1")
		peWantErr(t, "redirect to "+to, r, http.StatusBadGateway, "UNAVAILABLE")
		if _, msg := peErr(t, r); !strings.Contains(msg, "refused") {
			t.Fatalf("redirect to %s: message %q does not say it was refused", to, msg)
		}
	}
	// A refused redirect is a failure, not an answer: each attempt asked upstream again.
	if reg.Count(http.MethodGet, "manifest") < len(targets) {
		t.Fatalf("%d manifest GETs upstream for %d attempts", reg.Count(http.MethodGet, "manifest"), len(targets))
	}
	dial.mu.Lock()
	defer dial.mu.Unlock()
	if len(dial.refused) != 0 {
		t.Fatalf("regcache tried to dial %v", dial.refused)
	}
}

// --- 7. Access log ---------------------------------------------------------------------------

func TestAccessLogOneLinePerRequest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL, "aliases: [rt]")))

	type want struct {
		method, path        string
		status              int
		upstream, repo, ref string // "" when the request was refused before routing
		cache               string // "" when no answer came from the cache
	}
	wants := []want{
		{"GET", "/v2/", 401, "", "", "", ""}, // the ping without Authorization is challenged
		{"GET", "/v2/team/app/manifests/v1", 200, "registry.test", "team/app", "v1", "MISS"},
		{"HEAD", "/v2/rt/team/app/manifests/v1", 200, "registry.test", "team/app", "v1", "HIT"},
		{"GET", "/v2/team/app/manifests/" + pushed.Digest, 200, "registry.test", "team/app", pushed.Digest, "HIT"},
		{"GET", "/v2/team/app/manifests/missing", 404, "registry.test", "team/app", "missing", ""},
		{"GET", "/v2/evil.example.com/x/manifests/v1", 404, "", "", "", ""},
		{"GET", "/v2/BAD/manifests/v1", 400, "", "", "", ""},
		{"DELETE", "/v2/team/app/manifests/v1", 405, "", "", "", ""},
	}
	for _, w := range wants {
		if r := rc.Do(t, w.method, w.path); r.Status != w.status {
			t.Fatalf("%s %s: %d, want %d", w.method, w.path, r.Status, w.status)
		}
	}
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(rc.Logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	if len(lines) != len(wants) {
		t.Fatalf("%d request lines for %d requests:\n%s", len(lines), len(wants), rc.Logs.String())
	}
	for i, w := range wants {
		m := lines[i]
		if m["method"] != w.method || m["status"] != float64(w.status) {
			t.Errorf("line %d: method %v status %v, want %s %d", i, m["method"], m["status"], w.method, w.status)
		}
		if d, ok := m["duration"].(float64); !ok || d < 0 {
			t.Errorf("line %d: duration %v", i, m["duration"])
		}
		if w.upstream != "" && (m["upstream"] != w.upstream || m["repository"] != w.repo || m["reference"] != w.ref) {
			t.Errorf("line %d: %v, want upstream %s repository %s reference %s", i, m, w.upstream, w.repo, w.ref)
		}
		if w.upstream == "" && m["upstream"] != nil {
			t.Errorf("line %d: an unrouted request names upstream %v", i, m["upstream"])
		}
		if got, ok := m["cache"]; (w.cache == "" && ok) || (w.cache != "" && got != w.cache) {
			t.Errorf("line %d: cache %v, want %q", i, got, w.cache)
		}
		if m["path"] != strings.SplitN(w.path, "?", 2)[0] {
			t.Errorf("line %d: path %v", i, m["path"])
		}
	}
}
