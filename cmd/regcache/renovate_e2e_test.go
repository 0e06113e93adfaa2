package main

// Renovate itself (the npm package, its dockerfile manager and docker datasource) finds the
// releases and digests of a Docker Hub name, an lscr.io name and a ghcr.io name through
// regcache, with the set-up docs/clients.md gives, and reaches nothing but regcache.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// renovateDir is where `npm install --prefix DIR renovate@39.264.1` put Renovate: $REGCACHE_RENOVATE_DIR,
// or where .ci/test installs it. It skips the test, naming the install, when Renovate is absent
// (fails under REGCACHE_REQUIRE_RENOVATE, which .ci/test sets after installing it).
func renovateDir(t *testing.T) string {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("REGCACHE_REQUIRE_RENOVATE") != "" {
		skip = t.Fatalf
	}
	dir := os.Getenv("REGCACHE_RENOVATE_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "regcache-test", "renovate")
	}
	if _, err := exec.LookPath("node"); err != nil {
		skip("node not installed (apt-get install nodejs npm; bash .ci/test installs it)")
	}
	out, _ := exec.Command("node", "-p", `process.versions.node.split(".")[0]`).Output()
	if major, err := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || major < 20 {
		skip("Renovate 39 needs Node 20 or later; this node's major version is %q (install Node 20 from nodejs.org or NodeSource)", strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "renovate", "package.json")); err != nil {
		skip("Renovate not installed in %s (npm install --prefix %s renovate@39.264.1, or set REGCACHE_RENOVATE_DIR; bash .ci/test installs it)", dir, dir)
	}
	return dir
}

// renovateDep is what testdata/renovate/driver.js reports for one FROM line.
type renovateDep struct {
	DepName       string             `json:"depName"`
	PackageName   string             `json:"packageName"`
	CurrentValue  string             `json:"currentValue"`
	CurrentDigest string             `json:"currentDigest"`
	RegistryURL   string             `json:"registryUrl"`
	Releases      []string           `json:"releases"`
	Error         string             `json:"error"`
	Digests       map[string]*string `json:"digests"`
}

// runRenovate runs the driver over dockerfile with config (renovate.json's text), with the
// loopback guard preloaded, and fails the test if Renovate tried to reach anything else.
func runRenovate(t *testing.T, dir, config, dockerfile string, env ...string) []renovateDep {
	t.Helper()
	deps, refused := runRenovateGuarded(t, dir, config, dockerfile, env...)
	if refused != "" {
		t.Fatalf("Renovate tried to reach beyond loopback:\n%s", refused)
	}
	return deps
}

// runRenovateGuarded is runRenovate that returns what the guard refused instead of failing.
func runRenovateGuarded(t *testing.T, dir, config, dockerfile string, env ...string) ([]renovateDep, string) {
	t.Helper()
	tmp := t.TempDir()
	var cfg any
	if err := json.Unmarshal([]byte(config), &cfg); err != nil {
		t.Fatalf("the Renovate config is not JSON: %v\n%s", err, config)
	}
	in, _ := json.Marshal(map[string]any{"config": cfg, "dockerfile": dockerfile})
	inFile, outFile, guardLog := filepath.Join(tmp, "in.json"), filepath.Join(tmp, "out.json"), filepath.Join(tmp, "guard.log")
	if err := os.WriteFile(inFile, in, 0o600); err != nil {
		t.Fatal(err)
	}
	script, _ := filepath.Abs(filepath.Join("testdata", "renovate"))
	cmd := exec.Command("node", "-r", filepath.Join(script, "guard.js"), filepath.Join(script, "driver.js"), dir, inFile, outFile)
	// A clean environment: no tokens, no proxies, a home of its own.
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + tmp, "LOG_LEVEL=debug", "LOG_FORMAT=json",
		"REGCACHE_GUARD_LOG=" + guardLog, "REGCACHE_RENOVATE_CACHE=" + filepath.Join(tmp, "cache"),
	}, env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("Renovate ran in %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("renovate driver: %v\n%s", err, out)
	}
	refused, _ := os.ReadFile(guardLog)
	data, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	var deps []renovateDep
	if err := json.Unmarshal(data, &deps); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("Renovate's log:\n%s", out)
	}
	return deps, string(refused)
}

// renovateConfig is the docs' Renovate set-up (doc, for http://regcache:5000) for regcache at
// base (scheme://host:port), with user and password on its host rule when given. Over https
// it is as the docs say for TLS: https:// in registryUrls and no insecureRegistry (the test
// then passes NODE_EXTRA_CA_CERTS to runRenovate).
func renovateConfig(t *testing.T, doc, base string, userPass ...string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(doc, "http://regcache:5000", base)
	s = strings.ReplaceAll(s, "regcache:5000", u.Host)
	s = strings.ReplaceAll(s, `"regcache"`, `"`+u.Hostname()+`"`)
	var c map[string]any
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		t.Fatalf("the Renovate config in docs/clients.md is not JSON: %v\n%s", err, doc)
	}
	rules, _ := c["hostRules"].([]any)
	if len(rules) != 1 {
		t.Fatalf("docs/clients.md's Renovate set-up has %d host rules, the test expects one", len(rules))
	}
	rule := rules[0].(map[string]any)
	if u.Scheme == "https" {
		delete(rule, "insecureRegistry")
	}
	if len(userPass) == 2 {
		rule["username"], rule["password"] = userPass[0], userPass[1]
	}
	b, _ := json.Marshal(c)
	return string(b)
}

func TestRenovateThroughRegcache(t *testing.T) {
	t.Parallel()
	dir := renovateDir(t)
	hub := registrytest.New(t, registrytest.Bearer)
	lscr := registrytest.New(t, registrytest.Bearer)
	ghcr := registrytest.New(t, registrytest.Bearer)

	// What each registry holds: name -> tag -> pushed.
	type image struct {
		reg  *registrytest.Registry
		repo string
		tags map[string]registrytest.Pushed
	}
	plats := []string{"linux/amd64", "linux/arm64/v8"}
	images := map[string]*image{
		"alpine":                    {reg: hub, repo: "library/alpine"},
		"lscr.io/linuxserver/nginx": {reg: lscr, repo: "linuxserver/nginx"},
		"ghcr.io/owner/app":         {reg: ghcr, repo: "owner/app"},
	}
	images["docker.io/library/alpine"] = images["alpine"]
	push := func(name, tag string, p registrytest.Pushed) {
		if images[name].tags == nil {
			images[name].tags = map[string]registrytest.Pushed{}
		}
		images[name].tags[tag] = p
	}
	for _, tag := range []string{"3.18", "3.19", "3.20"} {
		push("alpine", tag, hub.PushIndex(t, "library/alpine", tag, types.OCIImageIndex, plats...))
	}
	for _, tag := range []string{"1.25.0", "1.26.1", "1.27.2"} {
		push("lscr.io/linuxserver/nginx", tag, lscr.PushIndex(t, "linuxserver/nginx", tag, types.DockerManifestList, plats...))
	}
	for _, tag := range []string{"v1.0.0", "v1.1.0"} {
		push("ghcr.io/owner/app", tag, ghcr.PushIndex(t, "owner/app", tag, types.OCIImageIndex, plats...))
	}
	// A single-platform release: a platform-pinned digest moves to the image itself.
	push("ghcr.io/owner/app", "v1.2.0", ghcr.PushImage(t, "owner/app", "v1.2.0", types.OCIManifestSchema1))

	// Each FROM line: an unpinned tag, one pinned to the index, and one pinned to a
	// platform's manifest (Renovate then follows that platform).
	type from struct{ name, tag, pin string }
	froms := []from{
		{"alpine", "3.18", ""},
		{"alpine", "3.18", "amd64"},
		{"docker.io/library/alpine", "3.18", "index"},
		{"lscr.io/linuxserver/nginx", "1.25.0", ""},
		{"lscr.io/linuxserver/nginx", "1.25.0", "arm64"},
		{"ghcr.io/owner/app", "v1.0.0", "index"},
		{"ghcr.io/owner/app", "v1.0.0", "arm64"},
	}
	var dockerfile strings.Builder
	pinned := make([]string, len(froms)) // the digest each FROM line is pinned to
	for i, f := range froms {
		line := "FROM " + f.name + ":" + f.tag
		cur := images[f.name].tags[f.tag]
		switch f.pin {
		case "index":
			pinned[i] = cur.Digest
		case "":
		default:
			pinned[i] = harness.PlatformDigests(t, cur)[f.pin]
		}
		if pinned[i] != "" {
			line += "@" + pinned[i]
		}
		dockerfile.WriteString(line + "\n")
	}

	// The docs' set-up as written, for regcache at its test address; with client auth on,
	// the docs' host rule also carries the credentials.
	doc := docBlock(t, "docs/clients.md", "**Renovate** (`renovate.json`, or the same keys in the bot's own config):", "json")
	const user, pass = "renovate", "s3cret-for-renovate"
	for _, mode := range []struct {
		name, auth string
		tls        bool
	}{
		{"anonymous", "", false},
		{"client auth", "auth:\n  htpasswd: " + writeHtpasswd(t, user, pass) + "\n", false},
		// Over HTTPS (tls:), verified against a test CA given as NODE_EXTRA_CA_CERTS, with no
		// insecure setting: the docs' TLS variant of the set-up.
		{"https", "", true},
	} {
		t.Run(mode.name, func(t *testing.T) {
			var o harness.Options
			var env []string
			if mode.tls {
				o.TLS = harness.NewTLS(t)
				env = append(env, "NODE_EXTRA_CA_CERTS="+o.TLS.CAFile)
			}
			rc := startRegcacheWith(t, harness.Config("",
				harness.Upstream("docker.io", hub.URL, "aliases: [hub]"),
				harness.Upstream("lscr.io", lscr.URL),
				harness.Upstream("ghcr.io", ghcr.URL),
			)+mode.auth, o)
			var creds []string
			if mode.auth != "" {
				creds = []string{user, pass}
			}
			config := renovateConfig(t, doc, rc.URL, creds...)
			deps := runRenovate(t, dir, config, dockerfile.String(), env...)
			if len(deps) != len(froms) {
				t.Fatalf("Renovate extracted %d dependencies from %d FROM lines: %+v", len(deps), len(froms), deps)
			}
			for i, dep := range deps {
				f, img := froms[i], images[froms[i].name]
				if dep.DepName != strings.TrimPrefix(f.name, "docker.io/library/") && dep.DepName != f.name {
					t.Errorf("line %d: depName %q for %s", i, dep.DepName, f.name)
				}
				if dep.CurrentDigest != pinned[i] {
					t.Errorf("line %d: Renovate read the pin %q, the line has %q", i, dep.CurrentDigest, pinned[i])
				}
				want := slices.Sorted(maps.Keys(img.tags))
				got := slices.Sorted(slices.Values(dep.Releases))
				if !slices.Equal(got, want) {
					t.Errorf("%s: releases %v, want %v (registry url %s)", f.name, dep.Releases, want, dep.RegistryURL)
					continue
				}
				for tag, p := range img.tags {
					wantDigest := p.Digest
					// Pinned to a platform's manifest, the new tag's manifest for that platform (a
					// single-platform image is its own).
					if f.pin != "" && f.pin != "index" && p.MediaType != string(types.OCIManifestSchema1) {
						wantDigest = harness.PlatformDigests(t, p)[f.pin]
					}
					if d := dep.Digests[tag]; d == nil || *d != wantDigest {
						t.Errorf("%s@%s (pinned to %q): digest of %s is %v, want %s", f.name, pinned[i], f.pin, tag, d, wantDigest)
					}
				}
			}

			if mode.auth == "" && !mode.tls {
				// The guard is live: without the aliases, Renovate takes an lscr.io name to lscr.io
				// (registryUrls do not apply to names with a registry), and the guard refuses it.
				noAliases := `{"registryUrls": ["http://` + rc.Addr + `/lscr.io"]}`
				if deps, refused := runRenovateGuarded(t, dir, noAliases, "FROM lscr.io/linuxserver/nginx:1.25.0\n"); !strings.Contains(refused, "lscr.io") || len(deps) != 1 || deps[0].Releases != nil {
					t.Errorf("without registryAliases: guard refused %q, Renovate found %+v", refused, deps)
				}
			}

			// What Renovate asked, as regcache logged it: every request answered, nothing refused.
			var paths []string
			sc := bufio.NewScanner(strings.NewReader(rc.Logs.String()))
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var m map[string]any
				if json.Unmarshal(sc.Bytes(), &m) != nil || m["msg"] != "request" {
					continue
				}
				p := fmt.Sprintf("%v %v %v", m["method"], m["path"], m["status"])
				// 401 is the challenge: to a ping, and with auth on to any first request.
				challenge := strings.HasSuffix(fmt.Sprint(m["path"]), "/v2/") || mode.auth != "" && m["path"] != "/token"
				if st, _ := m["status"].(float64); st != http.StatusOK && !(st == http.StatusUnauthorized && challenge) {
					t.Errorf("regcache answered %s", p)
				}
				paths = append(paths, p)
			}
			t.Logf("Renovate's requests to regcache:\n%s", strings.Join(paths, "\n"))
			// Over http Renovate keeps registryUrls' path in front of /v2 (over https it moves it
			// behind: /v2/hub/...).
			if strings.HasPrefix(rc.URL, "http:") && !slices.ContainsFunc(paths, func(p string) bool { return strings.Contains(p, " /hub/v2/alpine/manifests/") }) {
				t.Errorf("Renovate never used the /hub/v2/ form for Docker Hub names: the test no longer covers it")
			}
		})
	}
}
