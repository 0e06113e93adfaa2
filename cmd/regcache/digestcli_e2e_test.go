package main

// `regcache digest`, against a running regcache and standalone (the same proxy built in
// process from a config naming the test registries), checked against crane's digests of
// the registries themselves; its flags, exit codes and client auth; `regcache version`;
// and the binary as a shell user runs it.

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/internal/version"
	"regcache/upstream/registrytest"
)

// runCLI runs the command line in process and returns its exit code and output.
func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errs bytes.Buffer
	code = run(args, &out, &errs)
	return code, out.String(), errs.String()
}

// cliWorld is a Docker Hub, an lscr.io and a ghcr.io (test registries with anonymous
// Bearer auth, like the real ones), a regcache in front of them and a config file naming
// them (for standalone lookups).
type cliWorld struct {
	hub, lscr, ghcr    *registrytest.Registry
	alpine, idx, image registrytest.Pushed
	rc                 *harness.Instance
	cfgYAML, cfgFile   string
}

func startForCLI(t *testing.T, extra string) *cliWorld {
	t.Helper()
	w := &cliWorld{
		hub:  registrytest.New(t, registrytest.Bearer),
		lscr: registrytest.New(t, registrytest.Bearer),
		ghcr: registrytest.New(t, registrytest.Bearer),
	}
	w.alpine = w.hub.PushImage(t, "library/alpine", "latest", types.DockerManifestSchema2)
	w.hub.PushIndex(t, "library/nginx", "latest", types.DockerManifestList, "linux/amd64", "linux/arm64/v8")
	w.idx = w.lscr.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	w.image = w.lscr.PushImage(t, "linuxserver/single", "1.0", types.OCIManifestSchema1)
	w.ghcr.PushImage(t, "home-assistant/home-assistant", "stable", types.OCIManifestSchema1)
	w.cfgYAML = harness.Config("", harness.Upstream("docker.io", w.hub.URL, "aliases: [hub]"),
		harness.Upstream("lscr.io", w.lscr.URL), harness.Upstream("ghcr.io", w.ghcr.URL)) + extra
	w.rc = startRegcache(t, w.cfgYAML)
	w.cfgFile = filepath.Join(t.TempDir(), "regcache.yaml")
	if err := os.WriteFile(w.cfgFile, []byte(w.cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// crane is `crane digest` of ref straight from the registry (no regcache), with args
// (--platform) added.
func crane(t *testing.T, reg *registrytest.Registry, ref string, args ...string) string {
	t.Helper()
	tool := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	return strings.TrimSpace(harness.RunTool(t, nil, tool, append([]string{"digest", "--insecure", reg.Host + "/" + ref}, args...)...))
}

// digestRequests counts the batch requests the regcache has answered.
func digestRequests(rc *harness.Instance) int {
	return strings.Count(rc.Logs.String(), `"path":"/api/v1/digests"`)
}

func TestDigestCommand(t *testing.T) {
	t.Parallel()
	w := startForCLI(t, "")
	idx, image, alpine := crane(t, w.lscr, "linuxserver/nginx:latest"), crane(t, w.lscr, "linuxserver/single:1.0"), crane(t, w.hub, "library/alpine:latest")
	arm := crane(t, w.lscr, "linuxserver/nginx:latest", "--platform", "linux/arm64")
	amd := crane(t, w.lscr, "linuxserver/single:1.0", "--platform", "linux/amd64")
	if idx != w.idx.Digest || image != w.image.Digest || alpine != w.alpine.Digest || arm == idx || arm == "" || amd != image {
		t.Fatalf("crane's digests are not the pushed ones: %s %s %s %s %s", idx, image, alpine, arm, amd)
	}

	jsonByMode := map[string][]map[string]any{}
	for _, mode := range []struct {
		name string
		args []string
	}{{"server", []string{"--server", w.rc.URL}}, {"standalone", []string{"--config", w.cfgFile}}} {
		digest := func(args ...string) (int, string, string) {
			return runCLI(append(append([]string{"digest"}, mode.args...), args...)...)
		}
		before := digestRequests(w.rc)

		// Each image as typed (alpine, not docker.io/library/alpine:latest), crane's digests.
		code, out, errs := digest("alpine", "lscr.io/linuxserver/nginx:latest", "lscr.io/linuxserver/single:1.0")
		want := "alpine " + alpine + "\nlscr.io/linuxserver/nginx:latest " + idx + "\nlscr.io/linuxserver/single:1.0 " + image + "\n"
		if code != exitOK || out != want || errs != "" {
			t.Fatalf("%s: exit %d\n%s\nstderr: %s\nwant:\n%s", mode.name, code, out, errs, want)
		}

		// A platform: the index's child for it, as crane picks it; flags after the image.
		code, out, errs = runCLI(append([]string{"digest", "lscr.io/linuxserver/nginx:latest"}, append(mode.args, "--platform", "linux/arm64")...)...)
		if want := "lscr.io/linuxserver/nginx:latest " + idx + " " + arm + "\n"; code != exitOK || out != want || errs != "" {
			t.Fatalf("%s --platform: exit %d %q %q, want %q", mode.name, code, out, errs, want)
		}
		code, out, _ = digest("--platform=linux/amd64", "lscr.io/linuxserver/single:1.0")
		if want := "lscr.io/linuxserver/single:1.0 " + image + " " + amd + "\n"; code != exitOK || out != want {
			t.Fatalf("%s single --platform: exit %d %q, want %q", mode.name, code, out, want)
		}

		// Not found: the others are printed, the missing one is named on stderr, exit 1.
		code, out, errs = digest("lscr.io/linuxserver/nginx:nope", "alpine", "quay.io/x/y")
		if code != exitNotFound || out != "alpine "+alpine+"\n" ||
			!strings.Contains(errs, "lscr.io/linuxserver/nginx:nope: ") || !strings.Contains(errs, `quay.io/x/y: registry "quay.io" is not configured`) {
			t.Fatalf("%s not found: exit %d %q %q", mode.name, code, out, errs)
		}
		// A platform the index lacks is not found either.
		if code, _, errs = digest("--platform", "linux/s390x", "lscr.io/linuxserver/nginx:latest"); code != exitNotFound || !strings.Contains(errs, "no manifest for platform linux/s390x") {
			t.Fatalf("%s absent platform: exit %d %q", mode.name, code, errs)
		}
		// A platform only the server's parser refuses is a usage error still.
		if code, _, errs = digest("--platform", "linux/arm/v99", "alpine"); code != exitUsage || !strings.Contains(errs, "PLATFORM_INVALID") {
			t.Fatalf("%s platform v99: exit %d %q", mode.name, code, errs)
		}

		// --json: the batch API's answer, in order, error entries included.
		code, out, errs = digest("alpine", "--json", "lscr.io/linuxserver/nginx:nope", "--platform", "linux/arm64", "lscr.io/linuxserver/nginx")
		var ans struct {
			Results []map[string]any `json:"results"`
		}
		if err := json.Unmarshal([]byte(out), &ans); err != nil || code != exitNotFound || len(ans.Results) != 3 {
			t.Fatalf("%s --json: exit %d %v\n%s", mode.name, code, err, out)
		}
		r := ans.Results
		if r[0]["image"] != "alpine" || r[0]["error"] == nil || // an amd64 image only
			!strings.Contains(errs, "alpine: no manifest for platform linux/arm64 in "+alpine) ||
			r[1]["image"] != "lscr.io/linuxserver/nginx:nope" || r[1]["error"] == nil ||
			r[2]["digest"] != idx || r[2]["platformDigest"] != arm || r[2]["platform"] != "linux/arm64/v8" ||
			!strings.Contains(errs, "lscr.io/linuxserver/nginx:nope: ") {
			t.Fatalf("%s --json: %v\nstderr: %s", mode.name, r, errs)
		}
		if !strings.HasPrefix(out, "{\n  \"results\": [\n") {
			t.Fatalf("%s --json is not indented:\n%s", mode.name, out)
		}
		for _, e := range r { // what differs between the two by when it was asked, and the cache's state
			for _, k := range []string{"cache", "fetchedAt", "ageSeconds", "ttlSeconds"} {
				delete(e, k)
			}
			if e["error"] != nil {
				// A 404 remembered (negative_ttl) is worded otherwise than upstream's own.
				delete(e["error"].(map[string]any), "message")
			}
		}
		jsonByMode[mode.name] = r

		// The server was asked only in server mode (one batch per command).
		asked := digestRequests(w.rc) - before
		if mode.name == "server" && asked != 7 || mode.name == "standalone" && asked != 0 {
			t.Fatalf("%s: the regcache answered %d batches", mode.name, asked)
		}
	}
	// More images than one batch takes go in several, one after another, printed in order.
	many := make([]string, 0, batchSize+1)
	for i := range batchSize + 1 {
		many = append(many, []string{"alpine", "docker.io/library/alpine:latest"}[i%2])
	}
	before := digestRequests(w.rc)
	code, out, errs := runCLI(append([]string{"digest", "--server", w.rc.URL}, many...)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != exitOK || errs != "" || len(lines) != batchSize+1 || lines[batchSize-1] != "docker.io/library/alpine:latest "+alpine ||
		lines[batchSize] != "alpine "+alpine || digestRequests(w.rc)-before != 2 {
		t.Fatalf("%d images: exit %d, %d lines, %d batches, %.300q", len(many), code, len(lines), digestRequests(w.rc)-before, errs)
	}

	s, _ := json.Marshal(jsonByMode["server"])
	a, _ := json.Marshal(jsonByMode["standalone"])
	if string(s) != string(a) {
		t.Fatalf("--json differs between the modes:\nserver:     %s\nstandalone: %s", s, a)
	}
}

// TestDigestCommandUsage: what is refused before anything is asked, each naming what is
// wrong, with exit 2.
func TestDigestCommandUsage(t *testing.T) {
	t.Parallel()
	// Every case names a server or a config whose one upstream is a closed loopback port: were
	// a refusal to break, the lookup it let through would still reach nothing beyond this host
	// (the embedded config names docker.io).
	closed := filepath.Join(t.TempDir(), "closed.yaml")
	if err := os.WriteFile(closed, []byte(harness.Config("", harness.Upstream("docker.io", "http://127.0.0.1:1"))), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--jsn", "alpine"}, "unknown flag --jsn"},
		{[]string{"alpine", "-x=1"}, "unknown flag -x"},
		{[]string{"--json"}, "no image given"},
		{[]string{"--platform", "linux", "alpine"}, `--platform "linux" is not os/arch[/variant]`},
		{[]string{"--platform", "linux//v7", "alpine"}, "is not os/arch[/variant]"},
		{[]string{"--platform", "linux/arm/v7/x", "alpine"}, "is not os/arch[/variant]"},
		{[]string{"alpine", "--platform"}, "--platform needs a value"},
		{[]string{"--json=maybe", "alpine"}, `--json: invalid value "maybe"`},
		{[]string{"--server", "http://127.0.0.1:1", "--config", "x.yaml", "alpine"}, "--config is for asking the registries directly"},
		{[]string{"--server", "ftp://robot:hunter2@host", "alpine"}, `server URL "ftp://robot:xxxxx@host" is not http(s)`},
		{[]string{"--config", filepath.Join(t.TempDir(), "nope.yaml"), "alpine"}, "does not exist"},
		{[]string{"Nginx"}, `invalid image reference "Nginx"`},
		{[]string{"--", "--json"}, `invalid image reference "--json"`},
	} {
		args := c.args
		if !slices.Contains(args, "--server") && !slices.Contains(args, "--config") {
			args = append([]string{"--config", closed}, args...)
		}
		code, out, errs := runCLI(append([]string{"digest"}, args...)...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errs, "regcache digest: ") || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 naming %q", c.args, code, out, errs, c.want)
		}
		if strings.Contains(errs, "hunter2") {
			t.Errorf("%v: the password is printed: %s", c.args, errs)
		}
	}
	// A config that does not validate is a usage error too, named by its key.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("upstreams:\n  - name: x.io\n    url: http://127.0.0.1:1\n    tiemout: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runCLI("digest", "--config", bad, "x.io/a/b"); code != exitUsage || !strings.Contains(errs, "tiemout") {
		t.Errorf("bad config: exit %d %q", code, errs)
	}
	if code, out, _ := runCLI("digest", "--help"); code != exitOK || !strings.HasPrefix(out, "usage: regcache digest") {
		t.Errorf("--help: exit %d %q", code, out)
	}
	if code, out, errs := runCLI("version"); code != exitOK || out != version.String()+"\n" || errs != "" {
		t.Errorf("version: exit %d %q %q", code, out, errs)
	}
	if code, _, errs := runCLI("version", "--json"); code != exitUsage || !strings.Contains(errs, `unexpected argument "--json"`) {
		t.Errorf("version --json: exit %d %q", code, errs)
	}
	if code, _, errs := runCLI("digets", "alpine"); code != exitUsage || !strings.Contains(errs, `unknown command "digets"`) {
		t.Errorf("unknown command: exit %d %q", code, errs)
	}
	// The server refuses a stray argument rather than starting without it (its exit stays 1).
	if code, _, errs := runCLI("serve", "-listen", "127.0.0.1:0", "extra"); code != 1 || !strings.Contains(errs, `unexpected argument "extra"`) {
		t.Errorf("serve extra: exit %d %q", code, errs)
	}
}

// TestDigestCommandAuthAndEnv: REGCACHE_URL names the server, its client auth takes
// credentials from the URL (Basic) or REGCACHE_TOKEN (Bearer), a refusal is exit 2, and no
// credential is ever printed. Not parallel: it sets the environment.
func TestDigestCommandAuthAndEnv(t *testing.T) {
	const token = "cli-static-token-0123456789"
	w := startForCLI(t, harness.Block("auth", `tokens: ["`+token+`"]`))
	t.Setenv("REGCACHE_TOKEN", "")
	t.Setenv("REGCACHE_URL", w.rc.URL)
	want := "alpine " + w.alpine.Digest + "\n"

	code, out, errs := runCLI("digest", "alpine")
	if code != exitUsage || out != "" || !strings.Contains(errs, "401 UNAUTHORIZED") || !strings.Contains(errs, "REGCACHE_TOKEN") {
		t.Fatalf("no credentials: exit %d %q %q", code, out, errs)
	}
	hostURL := strings.Replace(w.rc.URL, "http://", "http://robot:"+token+"@", 1)
	if code, out, errs = runCLI("digest", "--server", hostURL, "alpine"); code != exitOK || out != want {
		t.Fatalf("token as the Basic password: exit %d %q %q", code, out, errs)
	}
	wrong := strings.Replace(w.rc.URL, "http://", "http://robot:wrong-token-0123456789@", 1)
	if code, out, errs = runCLI("digest", "--server", wrong, "alpine"); code != exitUsage || !strings.Contains(errs, "refused") || strings.Contains(errs, "wrong-token") {
		t.Fatalf("wrong credentials: exit %d %q %q", code, out, errs)
	}
	t.Setenv("REGCACHE_TOKEN", token)
	if code, out, errs = runCLI("digest", "alpine"); code != exitOK || out != want || strings.Contains(errs, token) {
		t.Fatalf("REGCACHE_URL and REGCACHE_TOKEN: exit %d %q %q", code, out, errs)
	}
	// --config means standalone: REGCACHE_URL is not asked (the server would need no
	// credentials, the in-process one has no auth).
	t.Setenv("REGCACHE_TOKEN", "")
	before := digestRequests(w.rc)
	if code, out, errs = runCLI("digest", "--config", w.cfgFile, "alpine"); code != exitOK || out != want || digestRequests(w.rc) != before {
		t.Fatalf("--config beside REGCACHE_URL: exit %d %q %q", code, out, errs)
	}
	// A URL that is no regcache.
	if code, _, errs = runCLI("digest", "--server", w.hub.URL, "alpine"); code != exitUsage || !strings.Contains(errs, "is it a regcache?") {
		t.Fatalf("not a regcache: exit %d %q", code, errs)
	}
	// Nothing listening: the lookups failed (exit 1), not the command line.
	if code, _, errs = runCLI("digest", "--server", "http://127.0.0.1:1", "alpine"); code != exitNotFound || !strings.Contains(errs, "connection refused") {
		t.Fatalf("no server: exit %d %q", code, errs)
	}
}

// TestDigestCommandBinary runs the built binary as a shell user does: its exit codes, its
// version, `serve` with today's flags, and README's "From the shell" recipes as written
// (localhost:5000 being the test's regcache).
func TestDigestCommandBinary(t *testing.T) {
	t.Parallel()
	bin := harness.BuildBinary(t)
	w := startForCLI(t, "")
	exit := func(args ...string) (int, string) {
		out, err := exec.Command(bin, args...).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"digest", "--server", w.rc.URL, "alpine"}, 0},
		{[]string{"digest", "--server", w.rc.URL, "alpine", "alpine:nope"}, 1},
		{[]string{"digest", "--server", w.rc.URL, "--bogus", "alpine"}, 2},
		{[]string{"digest", "--config", w.cfgFile, "lscr.io/linuxserver/nginx"}, 0},
		{[]string{"nope"}, 2},
	} {
		if code, out := exit(c.args...); code != c.code {
			t.Errorf("%v: exit %d, want %d (%s)", c.args, code, c.code, out)
		}
	}
	if code, out := exit("version"); code != 0 || strings.TrimSpace(out) == "" || strings.Contains(out, " ") {
		t.Errorf("version: exit %d %q", code, out)
	}

	// serve with today's flags: starts, answers, stops on SIGTERM with exit 0.
	p := harness.StartCommand(t, bin, "serve", "-config", w.cfgFile, "-listen", "127.0.0.1:0", "-log-level", "info")
	if code, out := exit("digest", "--server", "http://"+p.Addr, "lscr.io/linuxserver/single:1.0"); code != 0 || out != "lscr.io/linuxserver/single:1.0 "+w.image.Digest+"\n" {
		t.Fatalf("digest from the served binary: exit %d %q", code, out)
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.Exited:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, p.Logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop within 20 s of SIGTERM")
	}

	// HTTPS, with a CA of the user's (SSL_CERT_FILE), behind a proxy that serves regcache
	// under a path.
	front := httptest.NewUnstartedServer(http.StripPrefix("/regcache", httputil.NewSingleHostReverseProxy(mustParse(t, w.rc.URL))))
	front.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below is expected
	front.StartTLS()
	defer front.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		env  string
		code int
		out  string
	}{{"SSL_CERT_FILE=" + ca, 0, "alpine " + w.alpine.Digest + "\n"}, {"SSL_CERT_FILE=" + filepath.Join(t.TempDir(), "none.pem"), 1, ""}} {
		cmd := exec.Command(bin, "digest", "--server", front.URL+"/regcache/", "alpine")
		var stderr bytes.Buffer
		cmd.Env, cmd.Stderr = append(os.Environ(), c.env), &stderr
		out, err := cmd.Output()
		if ee := (*exec.ExitError)(nil); err != nil && !errors.As(err, &ee) {
			t.Fatal(err) // it did not run
		}
		if cmd.ProcessState.ExitCode() != c.code || string(out) != c.out || c.code == 1 && !strings.Contains(stderr.String(), "certificate") {
			t.Fatalf("https with %s: exit %d %q %q", c.env, cmd.ProcessState.ExitCode(), out, stderr.String())
		}
	}

	runReadmeRecipes(t, bin, w)
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// runReadmeRecipes runs each command of README's "From the shell" block with bin as
// `regcache`, localhost:5000 as w's regcache and, for a standalone command, --config naming
// w's registries (the embedded config's are the real ones), and checks its output against
// the comment lines after it ("sha256:..." stands for any digest).
func runReadmeRecipes(t *testing.T, bin string, w *cliWorld) {
	harness.Tool(t, "jq", "apt-get install jq")
	block := docBlock(t, "README.md", "## From the shell", "sh")
	path := filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH")
	var cmds []string
	var want [][]string
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		if c, ok := strings.CutPrefix(line, "# "); ok && len(cmds) > 0 && strings.HasPrefix(c, "  ") {
			want[len(want)-1] = append(want[len(want)-1], strings.TrimSpace(c))
		} else if !strings.HasPrefix(line, "#") {
			cmds, want = append(cmds, line), append(want, nil)
		}
	}
	if len(cmds) < 3 {
		t.Fatalf("README's block has %d commands", len(cmds))
	}
	for i, c := range cmds {
		sh := strings.ReplaceAll(c, "http://localhost:5000", w.rc.URL)
		if !strings.Contains(c, "localhost:5000") {
			sh = strings.Replace(sh, "regcache digest", "regcache digest --config "+w.cfgFile, 1)
		}
		cmd := exec.Command("sh", "-c", sh)
		cmd.Env = append(os.Environ(), "PATH="+path, "REGCACHE_URL=", "REGCACHE_TOKEN=")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("README: %s: %v\n%s", c, err, out)
		}
		got := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(got) != len(want[i]) {
			t.Fatalf("README: %s printed %q, the README shows %q", c, got, want[i])
		}
		for j, g := range got {
			gf, wf := strings.Fields(g), strings.Fields(want[i][j])
			match := len(gf) == len(wf)
			for k := 0; match && k < len(gf); k++ {
				match = gf[k] == wf[k] || wf[k] == "sha256:..." && len(gf[k]) == len("sha256:")+64 && strings.HasPrefix(gf[k], "sha256:")
			}
			if !match {
				t.Fatalf("README: %s printed %q, the README shows %q", c, g, want[i][j])
			}
		}
	}
}

// TestDigestCommandSafety: a server that redirects gets neither the credentials nor the
// images sent on (exit 2); a URL without a scheme is refused without printing its
// password; a server whose max_request_body holds fewer names than a batch is asked in
// smaller batches; standalone ignores the sections a server's config needs its own
// environment for (auth tokens, webhooks), and a later batch that fails keeps the
// results of the earlier ones.
func TestDigestCommandSafety(t *testing.T) {
	t.Parallel()
	w := startForCLI(t, harness.Block("server", "max_request_body: 1KiB"))

	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	front := httptest.NewServer(http.RedirectHandler(other.URL+"/api/v1/digests", http.StatusTemporaryRedirect))
	defer front.Close()
	withCreds := strings.Replace(front.URL, "http://", "http://robot:hunter2-secret@", 1)
	if code, out, errs := runCLI("digest", "--server", withCreds, "alpine"); code != exitUsage || out != "" || !strings.Contains(errs, "307") || elsewhere.Load() != 0 || strings.Contains(errs, "hunter2") {
		t.Fatalf("redirect: exit %d %q %q; the redirect target was asked %d times", code, out, errs, elsewhere.Load())
	}
	if code, _, errs := runCLI("digest", "--server", "robot:hunter2@127.0.0.1:5000", "alpine"); code != exitUsage || strings.Contains(errs, "hunter2") || !strings.Contains(errs, "is not http(s)") {
		t.Fatalf("no scheme: exit %d %q", code, errs)
	}

	// 200 names are far more than 1 KiB of JSON: both modes answer them all.
	images := make([]string, 200)
	var want strings.Builder
	for i := range images {
		images[i] = "alpine"
		want.WriteString("alpine " + w.alpine.Digest + "\n")
	}
	for _, mode := range [][]string{{"--server", w.rc.URL}, {"--config", w.cfgFile}} {
		if code, out, errs := runCLI(append(append([]string{"digest"}, mode...), images...)...); code != exitOK || out != want.String() {
			t.Fatalf("%v with max_request_body 1KiB: exit %d, %d bytes out, %q", mode[0], code, len(out), errs)
		}
	}

	// A server's config whose secrets only the server's environment holds.
	prod := filepath.Join(t.TempDir(), "prod.yaml")
	prodYAML := w.cfgYAML + harness.Block("auth", `tokens: ["${REGCACHE_TEST_UNSET_TOKEN}"]`) +
		"events:\n  webhooks:\n    - url: ${REGCACHE_TEST_UNSET_HOOK}\n" +
		"tls:\n  cert_file: /nonexistent/tls.crt\n  key_file: /nonexistent/tls.key\n"
	if err := os.WriteFile(prod, []byte(prodYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCLI("digest", "--config", prod, "alpine"); code != exitOK || out != "alpine "+w.alpine.Digest+"\n" {
		t.Fatalf("standalone with a server's config: exit %d %q %q", code, out, errs)
	}

	// The last batch (the 1001st name alone) fails: the earlier batches' lines are still
	// printed, and the exit is 1.
	flaky := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if string(body) == `{"images":["alpine"]}` {
			http.Error(rw, "down", http.StatusServiceUnavailable)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		target, _ := url.Parse(w.rc.URL)
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(rw, r)
	}))
	defer flaky.Close()
	many := make([]string, batchSize+1)
	for i := range many {
		many[i] = "alpine"
	}
	code, out, errs := runCLI(append([]string{"digest", "--server", flaky.URL}, many...)...)
	if code != exitNotFound || strings.Count(out, "\n") != batchSize || !strings.Contains(errs, "1 of 1001 images not looked up") {
		t.Fatalf("a failing second batch: exit %d, %d lines, %q", code, strings.Count(out, "\n"), errs)
	}
}
