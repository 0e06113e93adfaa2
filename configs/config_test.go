package configs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// minimalUpstream is the smallest valid upstreams: block; tests append keys under it
// (indented four spaces) or add more list items.
const minimalUpstream = `upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
`

// reveal and secret are the only places that depend on Secret being a string type, so a
// change of its representation touches just these two.
func reveal(s Secret) string { return s.Reveal() }
func secret(v string) Secret { return NewSecret(v) }

// bcryptHash hashes pw at the lowest cost, as htpasswd -B would (at a higher one).
func bcryptHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// mustParse parses text and fails the test on error.
func mustParse(t *testing.T, text string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(text))
	if err != nil {
		t.Fatalf("Parse: unexpected error: %v\n--- input ---\n%s", err, text)
	}
	return cfg
}

// unsetEnv removes name from the environment for the duration of the test and restores
// whatever was there afterwards.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "") // registers the restore
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}

// writeFile writes content to a new file in a per-test temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadEmbeddedDefault(t *testing.T) {
	cfg, err := Load("")
	if err != nil {
		t.Fatalf(`Load(""): %v`, err)
	}

	if cfg.Listen != ":5000" {
		t.Errorf("Listen = %q, want %q", cfg.Listen, ":5000")
	}
	if cfg.DefaultUpstream != "docker.io" {
		t.Errorf("DefaultUpstream = %q, want %q", cfg.DefaultUpstream, "docker.io")
	}

	wantCache := Cache{
		MaxSize:        256 << 20,
		TagTTL:         Duration(60 * time.Second),
		MaxStale:       Duration(24 * time.Hour),
		NegativeTTL:    Duration(10 * time.Second),
		RevalidateWait: Duration(2 * time.Second),
		ErrorBackoff:   Duration(5 * time.Second),
		MaxBlobSize:    1 << 20,

		TagsMaxPagesPerRequest: 20,
		TagsMaxCount:           100_000,
		TagsMaxBytes:           8 << 20,
	}
	wantCache.TagTTLRules = []TTLRule{
		{Match: `^v?\d+\.\d+\.\d+$`, TTL: Duration(time.Hour)},
		{Match: `^sha256-[0-9a-f]{64}(\.[a-z]+)?$`, TTL: Duration(time.Hour)},
	}
	if !reflect.DeepEqual(cfg.Cache, wantCache) {
		t.Errorf("Cache = %+v, want %+v", cfg.Cache, wantCache)
	}

	// Client auth is off by default, and the realm comes from the request.
	if cfg.PublicURL != "" || cfg.TrustForwardedHeaders {
		t.Errorf("PublicURL/TrustForwardedHeaders = %q/%v, want empty/false", cfg.PublicURL, cfg.TrustForwardedHeaders)
	}
	if cfg.Auth.Enabled() {
		t.Errorf("Auth = %+v, want off", cfg.Auth)
	}
	if cfg.Auth.Htpasswd != "" || cfg.Auth.Tokens != nil || reveal(cfg.Auth.Secret) != "" {
		t.Errorf("Auth = %+v, want no htpasswd, tokens or secret", cfg.Auth)
	}
	if cfg.Auth.TokenTTL.D() != 5*time.Minute {
		t.Errorf("Auth.TokenTTL = %v, want 5m", cfg.Auth.TokenTTL.D())
	}

	wantServer := Server{
		ReadTimeout:    Duration(30 * time.Second),
		WriteTimeout:   Duration(30 * time.Minute),
		IdleTimeout:    Duration(120 * time.Second),
		MaxHeaderSize:  16 << 10,
		MaxConnsPerIP:  0,
		Concurrency:    0,
		MaxRequestBody: 1 << 20,
	}
	if cfg.Server != wantServer {
		t.Errorf("Server = %+v, want %+v", cfg.Server, wantServer)
	}

	wantUpstreams := []struct {
		name, url string
		aliases   []string
	}{
		{"docker.io", "https://registry-1.docker.io", []string{"hub", "index.docker.io", "registry-1.docker.io"}},
		{"ghcr.io", "https://ghcr.io", nil},
		{"lscr.io", "https://lscr.io", nil},
		{"quay.io", "https://quay.io", nil},
		{"gcr.io", "https://gcr.io", nil},
		{"registry.k8s.io", "https://registry.k8s.io", nil},
		{"public.ecr.aws", "https://public.ecr.aws", nil},
		{"mcr.microsoft.com", "https://mcr.microsoft.com", nil},
	}
	if len(cfg.Upstreams) != len(wantUpstreams) {
		var got []string
		for _, u := range cfg.Upstreams {
			got = append(got, u.Name)
		}
		t.Fatalf("upstreams = %v, want %d upstreams", got, len(wantUpstreams))
	}
	for i, want := range wantUpstreams {
		u := cfg.Upstreams[i]
		t.Run(want.name, func(t *testing.T) {
			if u.Name != want.name {
				t.Errorf("upstreams[%d].Name = %q, want %q", i, u.Name, want.name)
			}
			if u.URL != want.url {
				t.Errorf("URL = %q, want %q", u.URL, want.url)
			}
			if !slices.Equal(u.Aliases, want.aliases) {
				t.Errorf("Aliases = %q, want %q", u.Aliases, want.aliases)
			}
			if u.Timeout.D() != 30*time.Second {
				t.Errorf("Timeout = %v, want 30s", u.Timeout.D())
			}
			if u.ConnectTimeout.D() != 5*time.Second {
				t.Errorf("ConnectTimeout = %v, want 5s", u.ConnectTimeout.D())
			}
			if u.TagTTL != nil {
				t.Errorf("TagTTL = %v, want nil (inherit cache.tag_ttl)", u.TagTTL.D())
			}
			if got := cfg.TagTTLFor(&u); got != 60*time.Second {
				t.Errorf("TagTTLFor = %v, want 60s", got)
			}
			if u.StrictAccept {
				t.Error("StrictAccept = true, want false")
			}
			if u.Credentials != nil {
				t.Errorf("Credentials = %+v, want nil", *u.Credentials)
			}
			if u.TLS != (TLS{}) {
				t.Errorf("TLS = %+v, want zero", u.TLS)
			}
		})
	}

	// Every name and alias of the default resolves, case-insensitively.
	for _, name := range []string{"docker.io", "hub", "HUB", "index.docker.io", "Registry-1.Docker.IO"} {
		if u := cfg.Lookup(name); u == nil || u.Name != "docker.io" {
			t.Errorf("Lookup(%q) = %v, want docker.io", name, u)
		}
	}
}

func TestDefaultIsEmbeddedTextAndACopy(t *testing.T) {
	d := Default()
	if !bytes.Equal(d, defaultYAML) {
		t.Fatal("Default() differs from the embedded regcache.yaml")
	}
	fromDefault := mustParse(t, string(d))
	fromLoad, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromDefault, fromLoad) {
		t.Errorf("Parse(Default()) = %+v\nLoad(\"\") = %+v", fromDefault, fromLoad)
	}

	// Changing the returned slice must not change the embedded default.
	for i := range d {
		d[i] = 'x'
	}
	if bytes.Equal(Default(), d) {
		t.Fatal("Default() returned the embedded slice itself; writes to it leak into later calls")
	}
	if _, err := Load(""); err != nil {
		t.Fatalf(`Load("") after mutating Default(): %v`, err)
	}
}

func TestParseFullFile(t *testing.T) {
	ca := writeFile(t, "ca.pem", "-----BEGIN CERTIFICATE-----\n")
	htpasswd := writeFile(t, "htpasswd", "alice:"+bcryptHash(t, "pw")+"\n")
	t.Setenv("REGCACHE_TEST_TOKEN", "tok-from-env-0123456789")
	text := `
listen: "127.0.0.1:5050"
default_upstream: mirror            # an alias
public_url: https://regcache.example.com
trust_forwarded_headers: true
auth:
  htpasswd: ` + htpasswd + `
  tokens: ["static-one-0123456789", "${REGCACHE_TEST_TOKEN}"]
  secret: 0123456789abcdef0123456789abcdef
  token_ttl: 15m
cache:
  max_size: 1GiB
  tag_ttl: 2m
  max_stale: 1h30m
  negative_ttl: 0s
  revalidate_wait: 500ms
  error_backoff: 2s
  max_blob_size: 4MiB
  tags_max_pages_per_request: 5
  tags_max_count: 5000
  tags_max_bytes: 2MiB
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io/
    aliases: [hub, mirror]
    tag_ttl: 5m
    strict_accept: true
    credentials:
      username: alice
      password: "s3cret"
    timeout: 45s
    connect_timeout: 3s
    allowed_hosts: [auth.docker.io, production.cloudflare.docker.com.]
    max_concurrent: 16
    failures_to_open: 3
  - name: registry.internal:5443
    url: http://10.0.0.7:5443
    tls:
      ca_file: ` + ca + `
      insecure_skip_verify: true
  - name: ghcr.io
    url: https://ghcr.io
    tag_ttl: 0s
    credentials:                    # empty block: no credentials
`
	cfg := mustParse(t, text)

	if cfg.Listen != "127.0.0.1:5050" {
		t.Errorf("Listen = %q", cfg.Listen)
	}
	if cfg.DefaultUpstream != "mirror" {
		t.Errorf("DefaultUpstream = %q", cfg.DefaultUpstream)
	}
	wantCache := Cache{
		MaxSize:        1 << 30,
		TagTTL:         Duration(2 * time.Minute),
		MaxStale:       Duration(90 * time.Minute),
		NegativeTTL:    0,
		RevalidateWait: Duration(500 * time.Millisecond),
		ErrorBackoff:   Duration(2 * time.Second),
		MaxBlobSize:    4 << 20,

		TagsMaxPagesPerRequest: 5,
		TagsMaxCount:           5000,
		TagsMaxBytes:           2 << 20,
	}
	if !reflect.DeepEqual(cfg.Cache, wantCache) {
		t.Errorf("Cache = %+v, want %+v", cfg.Cache, wantCache)
	}
	if cfg.PublicURL != "https://regcache.example.com" || !cfg.TrustForwardedHeaders {
		t.Errorf("PublicURL/TrustForwardedHeaders = %q/%v", cfg.PublicURL, cfg.TrustForwardedHeaders)
	}
	if !cfg.Auth.Enabled() || cfg.Auth.Htpasswd != htpasswd {
		t.Errorf("Auth enabled %v, Htpasswd %q, want on with %s", cfg.Auth.Enabled(), cfg.Auth.Htpasswd, htpasswd)
	}
	var tokens []string
	for _, tok := range cfg.Auth.Tokens {
		tokens = append(tokens, reveal(tok))
	}
	if !slices.Equal(tokens, []string{"static-one-0123456789", "tok-from-env-0123456789"}) {
		t.Errorf("Auth.Tokens = %q", tokens)
	}
	if reveal(cfg.Auth.Secret) != "0123456789abcdef0123456789abcdef" || cfg.Auth.TokenTTL.D() != 15*time.Minute {
		t.Errorf("Auth secret/token_ttl = %q/%v", reveal(cfg.Auth.Secret), cfg.Auth.TokenTTL.D())
	}
	if len(cfg.Upstreams) != 3 {
		t.Fatalf("got %d upstreams, want 3", len(cfg.Upstreams))
	}

	hub := &cfg.Upstreams[0]
	if hub.URL != "https://registry-1.docker.io/" {
		t.Errorf("hub URL = %q", hub.URL)
	}
	if !slices.Equal(hub.Aliases, []string{"hub", "mirror"}) {
		t.Errorf("hub Aliases = %q", hub.Aliases)
	}
	if hub.TagTTL == nil || hub.TagTTL.D() != 5*time.Minute {
		t.Errorf("hub TagTTL = %v, want 5m", hub.TagTTL)
	}
	if !hub.StrictAccept {
		t.Error("hub StrictAccept = false, want true")
	}
	if hub.Credentials == nil {
		t.Fatal("hub Credentials = nil")
	}
	if hub.Credentials.Username != "alice" || reveal(hub.Credentials.Password) != "s3cret" {
		t.Errorf("hub Credentials = %q / %q", hub.Credentials.Username, reveal(hub.Credentials.Password))
	}
	if hub.Timeout.D() != 45*time.Second || hub.ConnectTimeout.D() != 3*time.Second {
		t.Errorf("hub timeouts = %v / %v, want 45s / 3s", hub.Timeout.D(), hub.ConnectTimeout.D())
	}
	if !slices.Equal(hub.AllowedHosts, []string{"auth.docker.io", "production.cloudflare.docker.com."}) {
		t.Errorf("hub AllowedHosts = %q", hub.AllowedHosts)
	}
	if hub.MaxConcurrent != 16 {
		t.Errorf("hub MaxConcurrent = %d, want 16", hub.MaxConcurrent)
	}
	if hub.FailuresToOpen != 3 {
		t.Errorf("hub FailuresToOpen = %d, want 3", hub.FailuresToOpen)
	}

	internal := &cfg.Upstreams[1]
	if internal.Name != "registry.internal:5443" || internal.URL != "http://10.0.0.7:5443" {
		t.Errorf("internal = %q %q", internal.Name, internal.URL)
	}
	if internal.TLS.CAFile != ca || !internal.TLS.InsecureSkipVerify {
		t.Errorf("internal TLS = %+v", internal.TLS)
	}
	if internal.Timeout.D() != 30*time.Second || internal.ConnectTimeout.D() != 5*time.Second {
		t.Errorf("internal timeouts = %v / %v, want defaults 30s / 5s", internal.Timeout.D(), internal.ConnectTimeout.D())
	}
	if internal.StrictAccept {
		t.Error("internal StrictAccept = true, want false")
	}

	ghcr := &cfg.Upstreams[2]
	if ghcr.Credentials != nil {
		t.Errorf("ghcr Credentials = %+v, want nil for an empty block", *ghcr.Credentials)
	}

	tagTTL := []struct {
		name string
		want time.Duration
	}{
		{"docker.io", 5 * time.Minute},              // per-upstream override
		{"registry.internal:5443", 2 * time.Minute}, // falls back to cache.tag_ttl
		{"ghcr.io", 0}, // explicit zero override is kept, not treated as unset
	}
	for _, tc := range tagTTL {
		u := cfg.Lookup(tc.name)
		if u == nil {
			t.Errorf("Lookup(%q) = nil", tc.name)
			continue
		}
		if got := cfg.TagTTLFor(u); got != tc.want {
			t.Errorf("TagTTLFor(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}

	if u := cfg.Lookup(cfg.DefaultUpstream); u != hub {
		t.Errorf("default upstream resolves to %v, want docker.io", u)
	}
}

func TestParseFillsDefaults(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "only upstreams",
			text: minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":5000" || c.DefaultUpstream != "docker.io" {
					t.Errorf("Listen/DefaultUpstream = %q/%q", c.Listen, c.DefaultUpstream)
				}
				want := Cache{256 << 20, Duration(time.Minute), nil, Duration(24 * time.Hour), Duration(10 * time.Second), Duration(2 * time.Second), Duration(5 * time.Second), 1 << 20, 20, 100_000, 8 << 20, nil, nil}
				if !reflect.DeepEqual(c.Cache, want) {
					t.Errorf("Cache = %+v, want %+v", c.Cache, want)
				}
				u := c.Upstreams[0]
				if u.Timeout.D() != 30*time.Second || u.ConnectTimeout.D() != 5*time.Second {
					t.Errorf("timeouts = %v/%v", u.Timeout.D(), u.ConnectTimeout.D())
				}
				if u.FailuresToOpen != 5 {
					t.Errorf("failures_to_open = %d", u.FailuresToOpen)
				}
			},
		},
		{
			name: "null values keep defaults",
			text: "listen:\ncache:\n  max_size:\n  tag_ttl: ~\n" + minimalUpstream + "    tag_ttl:\n    timeout:\n",
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":5000" || c.Cache.MaxSize != 256<<20 || c.Cache.TagTTL.D() != time.Minute {
					t.Errorf("got %q %d %v", c.Listen, c.Cache.MaxSize, c.Cache.TagTTL.D())
				}
				if c.Upstreams[0].TagTTL != nil {
					t.Errorf("TagTTL = %v, want nil", c.Upstreams[0].TagTTL.D())
				}
				if c.Upstreams[0].Timeout.D() != 30*time.Second {
					t.Errorf("Timeout = %v", c.Upstreams[0].Timeout.D())
				}
			},
		},
		{
			name: "tokens alone turn auth on; token_ttl keeps its default",
			text: "auth:\n  tokens: [static-token-0123456789]\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if !c.Auth.Enabled() || c.Auth.TokenTTL.D() != 5*time.Minute || reveal(c.Auth.Secret) != "" {
					t.Errorf("Auth = %+v (ttl %v)", c.Auth, c.Auth.TokenTTL.D())
				}
			},
		},
		{
			name: "secret and token_ttl without users or tokens leave auth off",
			text: "auth:\n  secret: 0123456789abcdef0123456789abcdef\n  token_ttl: 1m\npublic_url: http://10.0.0.1:5000/\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Auth.Enabled() || c.Auth.TokenTTL.D() != time.Minute || c.PublicURL != "http://10.0.0.1:5000/" {
					t.Errorf("Auth = %+v, PublicURL %q", c.Auth, c.PublicURL)
				}
			},
		},
		{
			name: "metrics_listen is off unless set",
			text: minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.MetricsListen != "" {
					t.Errorf("MetricsListen = %q, want off", c.MetricsListen)
				}
			},
		},
		{
			name: "metrics_listen",
			text: "metrics_listen: \":9090\"\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.MetricsListen != ":9090" {
					t.Errorf("MetricsListen = %q", c.MetricsListen)
				}
			},
		},
		{
			name: "empty auth block is auth off",
			text: "auth:\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Auth.Enabled() || c.Auth.TokenTTL.D() != 5*time.Minute {
					t.Errorf("Auth = %+v", c.Auth)
				}
			},
		},
		{
			name: "partial cache keeps other cache defaults",
			text: "cache:\n  tag_ttl: 5s\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Cache.TagTTL.D() != 5*time.Second || c.Cache.MaxStale.D() != 24*time.Hour || c.Cache.MaxSize != 256<<20 {
					t.Errorf("Cache = %+v", c.Cache)
				}
			},
		},
		{
			name: "YAML anchors and aliases resolve",
			text: "cache:\n  tag_ttl: &t 7s\n  negative_ttl: *t\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Cache.NegativeTTL.D() != 7*time.Second {
					t.Errorf("NegativeTTL = %v, want 7s", c.Cache.NegativeTTL.D())
				}
			},
		},
		{
			name: "plain byte count and bool forms",
			text: "cache:\n  max_size: 1048576\n" + minimalUpstream + "    strict_accept: \"true\"\n",
			check: func(t *testing.T, c *Config) {
				if c.Cache.MaxSize != 1<<20 || !c.Upstreams[0].StrictAccept {
					t.Errorf("MaxSize=%d StrictAccept=%v", c.Cache.MaxSize, c.Upstreams[0].StrictAccept)
				}
			},
		},
		{
			name: "full server block",
			text: "server:\n  read_timeout: 5s\n  write_timeout: 1h\n  idle_timeout: 90s\n  max_header_size: 32KiB\n" +
				"  max_conns_per_ip: 100\n  concurrency: \"5000\"\n  max_request_body: 512KiB\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				want := Server{Duration(5 * time.Second), Duration(time.Hour), Duration(90 * time.Second), 32 << 10, 100, 5000, 512 << 10}
				if c.Server != want {
					t.Errorf("Server = %+v, want %+v", c.Server, want)
				}
			},
		},
		{
			name: "partial server block keeps other server defaults",
			text: "server:\n  read_timeout: 2s\n  max_conns_per_ip: 0\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				want := defaults().Server
				want.ReadTimeout = Duration(2 * time.Second)
				if c.Server != want {
					t.Errorf("Server = %+v, want %+v", c.Server, want)
				}
			},
		},
		{
			name: "server limits at their bounds",
			text: "server:\n  max_header_size: 4KiB\n  max_request_body: 64MiB\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Server.MaxHeaderSize != 4<<10 || c.Server.MaxRequestBody != 64<<20 {
					t.Errorf("Server = %+v", c.Server)
				}
			},
		},
		{
			name: "url with trailing slash and upper-case scheme-less host name",
			text: "upstreams:\n  - name: Example.COM\n    url: http://example.com:8080/\ndefault_upstream: example.com\n",
			check: func(t *testing.T, c *Config) {
				if u := c.Lookup("EXAMPLE.com"); u == nil || u.URL != "http://example.com:8080/" {
					t.Errorf("Lookup = %v", u)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, mustParse(t, tc.text))
		})
	}
}

func TestParseRefusals(t *testing.T) {
	missingCA := filepath.Join(t.TempDir(), "no-such-ca.pem")
	up := func(extra string) string { return minimalUpstream + extra }
	missingHtpasswd := filepath.Join(t.TempDir(), "no-such-htpasswd")
	md5Htpasswd := writeFile(t, "htpasswd-md5", "alice:"+bcryptHash(t, "pw")+"\nbob:$apr1$Hunter2Salt$abcdefghijklmnopqrstuv\n")
	emptyHtpasswd := writeFile(t, "htpasswd-empty", "# nobody yet\n\n")
	auth := func(lines string) string { return "auth:\n" + lines + minimalUpstream }
	hook := func(line string) string {
		return minimalUpstream + "events:\n  webhooks:\n    - url: http://hooks.example/x\n      " + line + "\n"
	}

	tests := []struct {
		name string
		text string
		want []string // all must appear in the error
		not  []string // none may appear in the error
	}{
		{"unknown top-level key", "listn: \":5000\"\n" + minimalUpstream,
			[]string{"listn: unknown key", "line 1", "known keys here: listen, default_upstream, cache, upstreams"}, nil},
		{"unknown cache key", "cache:\n  maxsize: 1GiB\n" + minimalUpstream,
			[]string{"cache.maxsize: unknown key", "max_size"}, nil},
		{"unknown snapshot key", "cache:\n  snapshot:\n    path: /data/s\n    every: 1m\n" + minimalUpstream,
			[]string{"cache.snapshot.every: unknown key", "path, interval"}, nil},
		// Its keys commented out: refused, not a cold start in silence.
		{"snapshot with no value", "cache:\n  snapshot:\n  #  path: /data/s\n" + minimalUpstream,
			[]string{"cache.snapshot: has no value", "remove snapshot: to start cold"}, nil},
		{"snapshot without a path", "cache:\n  snapshot:\n    interval: 1m\n" + minimalUpstream,
			[]string{"cache.snapshot.path: must be set"}, nil},
		{"snapshot interval 0", "cache:\n  snapshot:\n    path: /data/s\n    interval: 0s\n" + minimalUpstream,
			[]string{"cache.snapshot.interval: must be more than 0", "5m"}, nil},
		{"snapshot interval negative", "cache:\n  snapshot:\n    path: /data/s\n    interval: -1m\n" + minimalUpstream,
			[]string{"cache.snapshot.interval"}, nil},
		{"unknown upstream key", up("    credntials:\n      username: a\n"),
			[]string{"upstreams[0].credntials: unknown key", "line 4", "credentials"}, nil},
		{"unknown key in second upstream", up("  - name: ghcr.io\n    url: https://ghcr.io\n    tagttl: 1s\n"),
			[]string{"upstreams[1].tagttl: unknown key"}, nil},
		{"budget neither auto nor a mapping", up("    budget: 100\n"),
			[]string{"upstreams[0].budget", `"100": write auto, or a mapping {requests: N, per: DURATION}`}, nil},
		{"budget without per", up("    budget: {requests: 100}\n"),
			[]string{"upstreams[0].budget.per: must be a window above zero"}, nil},
		{"budget without requests", up("    budget: {per: 1m}\n"),
			[]string{"upstreams[0].budget.requests: must be 1 to 1000000"}, nil},
		{"budget window too long", up("    budget: {requests: 5, per: 48h}\n"),
			[]string{"upstreams[0].budget.per", "at most 24h"}, nil},
		{"budget share above 100%", up("    budget_share: 150%\n"),
			[]string{"upstreams[0].budget_share", "from 0% to 100%"}, nil},
		{"unknown credentials key", up("    credentials:\n      user: a\n"),
			[]string{"upstreams[0].credentials.user: unknown key", "username, password"}, nil},
		{"unknown tls key", up("    tls:\n      cafile: /x\n"),
			[]string{"upstreams[0].tls.cafile: unknown key", "ca_file"}, nil},
		{"key names are case-sensitive", "Listen: \":1\"\n" + minimalUpstream,
			[]string{"Listen: unknown key"}, nil},

		{"not YAML", "listen: [\n", []string{"config is not valid YAML"}, nil},
		{"document is a list", "- a\n- b\n", []string{"config: expected a mapping of keys"}, nil},
		{"upstreams is a mapping", "upstreams:\n  name: docker.io\n", []string{"upstreams: expected a list"}, nil},
		{"upstream item is a scalar", "upstreams:\n  - docker.io\n", []string{"upstreams[0]: expected a mapping of keys"}, nil},
		{"cache is a scalar", "cache: big\n" + minimalUpstream, []string{"cache: expected a mapping of keys"}, nil},
		{"listen is a list", "listen: [a]\n" + minimalUpstream, []string{"listen: expected a single value"}, nil},
		{"aliases is a scalar", up("    aliases: hub\n"), []string{"upstreams[0].aliases: expected a list"}, nil},

		{"url without scheme", "upstreams:\n  - name: docker.io\n    url: registry-1.docker.io\n",
			[]string{"upstreams[0].url", `"registry-1.docker.io"`, "scheme must be http or https"}, nil},
		{"url host:port without scheme", "upstreams:\n  - name: docker.io\n    url: localhost:5000\n",
			[]string{"upstreams[0].url", "scheme must be http or https"}, nil},
		{"url ftp scheme", "upstreams:\n  - name: docker.io\n    url: ftp://registry-1.docker.io\n",
			[]string{"upstreams[0].url", "ftp://registry-1.docker.io", "scheme must be http or https"}, nil},
		{"url with path", "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io/v2\n",
			[]string{"upstreams[0].url", "without path or query"}, nil},
		{"url with query", "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io?x=1\n",
			[]string{"upstreams[0].url", "without path or query"}, nil},
		{"url with fragment", "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io#frag\n",
			[]string{"upstreams[0].url", "without path or query"}, nil},
		{"url with user:pass", "upstreams:\n  - name: docker.io\n    url: https://bob:Hunter2Pw@registry-1.docker.io\n",
			[]string{"upstreams[0].url", "put credentials under credentials:", `"https://registry-1.docker.io"`},
			[]string{"Hunter2Pw", "bob"}},
		{"url with user:pass and path", "upstreams:\n  - name: docker.io\n    url: https://bob:Hunter2Pw@registry-1.docker.io/v2\n",
			[]string{"upstreams[0].url", "put credentials under credentials:"}, []string{"Hunter2Pw"}},
		{"url with user only", "upstreams:\n  - name: docker.io\n    url: https://bob@registry-1.docker.io\n",
			[]string{"upstreams[0].url", "put credentials under credentials:"}, nil},
		{"url missing", "upstreams:\n  - name: docker.io\n", []string{"upstreams[0].url", "is not a URL"}, nil},
		{"url without host", "upstreams:\n  - name: docker.io\n    url: https://\n", []string{"upstreams[0].url", "no host"}, nil},
		{"bad url in second upstream", up("  - name: ghcr.io\n    url: ghcr.io\n"), []string{"upstreams[1].url"}, nil},

		{"bad cache duration", "cache:\n  tag_ttl: soon\n" + minimalUpstream,
			[]string{"cache.tag_ttl", `"soon" is not a duration`, "line 2"}, nil},
		{"duration without unit", "cache:\n  max_stale: 60\n" + minimalUpstream,
			[]string{"cache.max_stale", `"60" is not a duration`}, nil},
		{"bad upstream timeout", up("    timeout: fast\n"), []string{"upstreams[0].timeout", `"fast" is not a duration`}, nil},
		{"bad upstream tag_ttl", up("    tag_ttl: 1 minute\n"), []string{"upstreams[0].tag_ttl", "is not a duration"}, nil},
		{"bad connect_timeout", up("    connect_timeout: x\n"), []string{"upstreams[0].connect_timeout", "is not a duration"}, nil},

		{"bad size", "cache:\n  max_size: lots\n" + minimalUpstream, []string{"cache.max_size", `"lots" is not a size`}, nil},
		{"fractional size", "cache:\n  max_size: 1.5GiB\n" + minimalUpstream, []string{"cache.max_size", `"1.5GiB" is not a size`}, nil},
		{"negative size", "cache:\n  max_size: -1\n" + minimalUpstream, []string{"cache.max_size", "is not a size"}, nil},
		{"zero size", "cache:\n  max_size: 0\n" + minimalUpstream, []string{"cache.max_size: must be above zero"}, nil},

		{"negative tag_ttl", "cache:\n  tag_ttl: -1s\n" + minimalUpstream, []string{"cache.tag_ttl: must not be negative"}, nil},
		{"negative max_stale", "cache:\n  max_stale: -1h\n" + minimalUpstream, []string{"cache.max_stale: must not be negative"}, nil},
		{"negative negative_ttl", "cache:\n  negative_ttl: -10s\n" + minimalUpstream, []string{"cache.negative_ttl: must not be negative"}, nil},
		{"negative revalidate_wait", "cache:\n  revalidate_wait: -2s\n" + minimalUpstream, []string{"cache.revalidate_wait: must not be negative"}, nil},
		{"negative upstream tag_ttl", up("    tag_ttl: -5m\n"), []string{"upstreams[0].tag_ttl: must not be negative"}, nil},
		{"negative timeout", up("    timeout: -1s\n"), []string{"upstreams[0].timeout: must be above zero"}, nil},
		{"negative connect_timeout", up("    connect_timeout: -1s\n"), []string{"upstreams[0].connect_timeout: must be above zero"}, nil},
		{"negative max_concurrent", up("    max_concurrent: -1\n"), []string{"upstreams[0].max_concurrent: must not be negative"}, nil},
		{"max_concurrent not a number", up("    max_concurrent: many\n"), []string{"upstreams[0].max_concurrent"}, nil},
		{"allowed_hosts is a scalar", up("    allowed_hosts: auth.docker.io\n"), []string{"upstreams[0].allowed_hosts: expected a list"}, nil},
		{"allowed_hosts empty entry", up("    allowed_hosts: [\"\"]\n"), []string{"upstreams[0].allowed_hosts[0]", "exact host name"}, nil},
		{"allowed_hosts URL", up("    allowed_hosts: [auth.docker.io, \"https://auth.docker.io\"]\n"), []string{"upstreams[0].allowed_hosts[1]", "no scheme, port, path or *"}, nil},
		{"allowed_hosts port", up("    allowed_hosts: [\"auth.docker.io:443\"]\n"), []string{"upstreams[0].allowed_hosts[0]", "no scheme, port"}, nil},
		{"allowed_hosts wildcard", up("    allowed_hosts: [\"*.docker.io\"]\n"), []string{"upstreams[0].allowed_hosts[0]", "*"}, nil},
		{"allowed_hosts IP", up("    allowed_hosts: [169.254.169.254]\n"), []string{"upstreams[0].allowed_hosts[0]", "IP address or number is no host name"}, nil},
		{"allowed_hosts decimal IP", up("    allowed_hosts: [\"2852039166\"]\n"), []string{"upstreams[0].allowed_hosts[0]", "IP address or number"}, nil},
		{"allowed_hosts hex IP", up("    allowed_hosts: [0xa9fea9fe]\n"), []string{"upstreams[0].allowed_hosts[0]", "IP address or number"}, nil},
		{"allowed_hosts IPv6", up("    allowed_hosts: [\"::1\"]\n"), []string{"upstreams[0].allowed_hosts[0]"}, nil},
		{"allowed_hosts bad label", up("    allowed_hosts: [-auth.docker.io]\n"), []string{"upstreams[0].allowed_hosts[0]"}, nil},

		{"bad bool", up("    strict_accept: maybe\n"), []string{"upstreams[0].strict_accept", `"maybe" is not true or false`}, nil},
		{"empty listen", "listen: \"\"\n" + minimalUpstream, []string{"listen: must not be empty"}, nil},

		{"default_upstream names nothing", "default_upstream: nope.example\n" + minimalUpstream,
			[]string{"default_upstream", `"nope.example" is no upstream name or alias`}, nil},
		{"default docker.io missing from custom list", "upstreams:\n  - name: ghcr.io\n    url: https://ghcr.io\n",
			[]string{"default_upstream", `"docker.io"`}, nil},

		{"duplicate names", up("  - name: docker.io\n    url: https://mirror.example\n"),
			[]string{"upstreams[1].name", `"docker.io" is already used by upstreams[0].name`}, nil},
		{"duplicate names differ in case", up("  - name: Docker.IO\n    url: https://mirror.example\n"),
			[]string{"upstreams[1].name", "already used by upstreams[0].name"}, nil},
		{"alias equals another name", up("  - name: ghcr.io\n    url: https://ghcr.io\n    aliases: [docker.io]\n"),
			[]string{"upstreams[1].aliases[0]", "already used by upstreams[0].name"}, nil},
		{"alias equals own name", up("    aliases: [docker.io]\n"),
			[]string{"upstreams[0].aliases[0]", "already used by upstreams[0].name"}, nil},
		{"duplicate alias across upstreams", up("    aliases: [hub]\n  - name: ghcr.io\n    url: https://ghcr.io\n    aliases: [gh, HUB]\n"),
			[]string{"upstreams[1].aliases[1]", `"HUB" is already used by upstreams[0].aliases[0]`}, nil},
		{"name equals earlier alias", up("    aliases: [ghcr.io]\n  - name: ghcr.io\n    url: https://ghcr.io\n"),
			[]string{"upstreams[1].name", "already used by upstreams[0].aliases[0]"}, nil},
		{"empty name", "upstreams:\n  - url: https://ghcr.io\n", []string{"upstreams[0].name: must not be empty"}, nil},
		{"name with slash", "upstreams:\n  - name: ghcr.io/org\n    url: https://ghcr.io\n", []string{"upstreams[0].name", "ghcr.io/org"}, nil},
		{"alias with space", up("    aliases: [\"my hub\"]\n"), []string{"upstreams[0].aliases[0]", `"my hub"`}, nil},
		{"empty alias", up("    aliases: [\"\"]\n"), []string{"upstreams[0].aliases[0]: must not be empty"}, nil},

		{"username without password", up("    credentials:\n      username: alice\n"),
			[]string{"upstreams[0].credentials", "set both username and password"}, nil},
		{"password without username", up("    credentials:\n      password: TopSecretPw\n"),
			[]string{"upstreams[0].credentials", "set both username and password"}, []string{"TopSecretPw"}},

		{"empty upstreams list", "upstreams: []\n", []string{"upstreams: at least one upstream is needed"}, nil},
		{"no upstreams key", "listen: \":5000\"\n", []string{"upstreams: at least one upstream is needed"}, nil},
		{"empty document", "", []string{"upstreams: at least one upstream is needed"}, nil},

		{"missing ca_file", up("    tls:\n      ca_file: " + missingCA + "\n"),
			[]string{"upstreams[0].tls.ca_file", missingCA, "no such file"}, nil},

		{"zero max_blob_size", "cache:\n  max_blob_size: 0\n" + minimalUpstream, []string{"cache.max_blob_size: must be above zero"}, nil},
		{"bad max_blob_size", "cache:\n  max_blob_size: big\n" + minimalUpstream, []string{"cache.max_blob_size", `"big" is not a size`}, nil},
		{"zero tags_max_pages_per_request", "cache:\n  tags_max_pages_per_request: 0\n" + minimalUpstream, []string{"cache.tags_max_pages_per_request: must be from 1 to 1000"}, nil},
		{"huge tags_max_pages_per_request", "cache:\n  tags_max_pages_per_request: 5000\n" + minimalUpstream, []string{"cache.tags_max_pages_per_request: must be from 1 to 1000"}, nil},
		{"bad tags_max_pages_per_request", "cache:\n  tags_max_pages_per_request: many\n" + minimalUpstream, []string{"cache.tags_max_pages_per_request", `"many" is not a whole number`}, nil},
		{"negative tags_max_count", "cache:\n  tags_max_count: -1\n" + minimalUpstream, []string{"cache.tags_max_count: must be from 1 to 10000000"}, nil},
		{"tiny tags_max_bytes", "cache:\n  tags_max_bytes: 100\n" + minimalUpstream, []string{"cache.tags_max_bytes: must be between 1KiB and 1GiB"}, nil},
		{"huge tags_max_bytes", "cache:\n  tags_max_bytes: 2GiB\n" + minimalUpstream, []string{"cache.tags_max_bytes: must be between 1KiB and 1GiB"}, nil},

		{"public_url without scheme", "public_url: regcache.example.com\n" + minimalUpstream,
			[]string{"public_url", "scheme must be http or https"}, nil},
		{"public_url with path", "public_url: https://regcache.example.com/v2\n" + minimalUpstream,
			[]string{"public_url", "without path or query"}, nil},
		{"public_url with query", "public_url: https://regcache.example.com?x=1\n" + minimalUpstream,
			[]string{"public_url", "without path or query"}, nil},
		{"public_url without host", "public_url: https://\n" + minimalUpstream, []string{"public_url", "no host"}, nil},
		{"public_url with credentials", "public_url: https://bob:Hunter2Pw@regcache.example.com\n" + minimalUpstream,
			[]string{"public_url", "must not carry credentials"}, []string{"Hunter2Pw"}},
		{"bad trust_forwarded_headers", "trust_forwarded_headers: sometimes\n" + minimalUpstream,
			[]string{"trust_forwarded_headers", `"sometimes" is not true or false`}, nil},

		{"unknown server key", "server:\n  read_timeot: 1s\n" + minimalUpstream,
			[]string{"server.read_timeot: unknown key", "line 2", "read_timeout, write_timeout, idle_timeout, max_header_size, max_conns_per_ip, concurrency, max_request_body"}, nil},
		{"server is a scalar", "server: fast\n" + minimalUpstream, []string{"server: expected a mapping of keys"}, nil},
		{"bad read_timeout", "server:\n  read_timeout: 30\n" + minimalUpstream, []string{"server.read_timeout", `"30" is not a duration`}, nil},
		{"zero read_timeout", "server:\n  read_timeout: 0s\n" + minimalUpstream, []string{"server.read_timeout: must be above zero"}, nil},
		{"negative write_timeout", "server:\n  write_timeout: -1m\n" + minimalUpstream, []string{"server.write_timeout: must be above zero"}, nil},
		{"zero idle_timeout", "server:\n  idle_timeout: 0s\n" + minimalUpstream, []string{"server.idle_timeout: must be above zero"}, nil},
		{"bad max_header_size", "server:\n  max_header_size: huge\n" + minimalUpstream, []string{"server.max_header_size", `"huge" is not a size`}, nil},
		{"tiny max_header_size", "server:\n  max_header_size: 1KiB\n" + minimalUpstream, []string{"server.max_header_size: must be between 4KiB and 1MiB"}, nil},
		{"huge max_header_size", "server:\n  max_header_size: 2MiB\n" + minimalUpstream, []string{"server.max_header_size: must be between 4KiB and 1MiB"}, nil},
		{"zero max_request_body", "server:\n  max_request_body: 0\n" + minimalUpstream, []string{"server.max_request_body: must be between 1KiB and 64MiB"}, nil},
		{"huge max_request_body", "server:\n  max_request_body: 1GiB\n" + minimalUpstream, []string{"server.max_request_body: must be between 1KiB and 64MiB"}, nil},
		{"max_conns_per_ip not a number", "server:\n  max_conns_per_ip: many\n" + minimalUpstream,
			[]string{"server.max_conns_per_ip", `"many" is not a whole number`, "line 2"}, nil},
		{"max_conns_per_ip fractional", "server:\n  max_conns_per_ip: 1.5\n" + minimalUpstream,
			[]string{"server.max_conns_per_ip", `"1.5" is not a whole number`}, nil},
		{"negative max_conns_per_ip", "server:\n  max_conns_per_ip: -1\n" + minimalUpstream, []string{"server.max_conns_per_ip: must not be negative"}, nil},
		{"negative concurrency", "server:\n  concurrency: -5\n" + minimalUpstream, []string{"server.concurrency: must not be negative"}, nil},
		{"concurrency is a list", "server:\n  concurrency: [1]\n" + minimalUpstream, []string{"server.concurrency: expected a single value"}, nil},

		{"metrics_listen not host:port", "metrics_listen: 9090\n" + minimalUpstream, []string{"metrics_listen: \"9090\" is not host:port"}, nil},
		{"metrics_listen bad port", "metrics_listen: \":99999\"\n" + minimalUpstream, []string{"metrics_listen:", "port must be a number from 0 to 65535"}, nil},
		{"metrics_listen is listen", "listen: \":5000\"\nmetrics_listen: \":5000\"\n" + minimalUpstream, []string{"metrics_listen:", "takes listen's port"}, nil},
		{"metrics_listen on listen's port, every address", "listen: \":5000\"\nmetrics_listen: \"0.0.0.0:5000\"\n" + minimalUpstream, []string{"metrics_listen:", "takes listen's port"}, nil},

		{"unknown auth key", auth("  users: x\n"), []string{"auth.users: unknown key", "htpasswd, tokens, secret, token_ttl"}, nil},
		{"auth is a scalar", "auth: on\n" + minimalUpstream, []string{"auth: expected a mapping of keys"}, nil},
		{"tokens is a scalar", auth("  tokens: abc\n"), []string{"auth.tokens: expected a list"}, nil},
		{"empty static token", auth("  tokens: [static-token-0123456789, \"\"]\n"), []string{"auth.tokens[1]: must not be empty"}, nil},
		{"short static token", auth("  tokens: [static-token-0123456789, Hunter2Short]\n"),
			[]string{"auth.tokens[1]: must be at least 16 characters", "openssl rand"}, []string{"Hunter2Short"}},
		{"one-character static token", auth("  tokens: [a]\n"), []string{"auth.tokens[0]: must be at least 16 characters"}, nil},
		{"unset variable in a token", auth("  tokens: [\"${REGCACHE_TEST_SURELY_UNSET}\"]\n"),
			[]string{"auth.tokens[0]", "REGCACHE_TEST_SURELY_UNSET is not set"}, nil},
		{"short secret", auth("  secret: Hunter2Short\n"), []string{"auth.secret: must be at least 32 characters"}, []string{"Hunter2Short"}},
		{"zero token_ttl", auth("  token_ttl: 0s\n"), []string{"auth.token_ttl: must be above zero"}, nil},
		{"negative token_ttl", auth("  token_ttl: -5m\n"), []string{"auth.token_ttl: must be above zero"}, nil},
		{"bad token_ttl", auth("  token_ttl: 5\n"), []string{"auth.token_ttl", `"5" is not a duration`}, nil},
		{"missing htpasswd", auth("  htpasswd: " + missingHtpasswd + "\n"),
			[]string{"auth.htpasswd", missingHtpasswd, "no such file"}, nil},
		{"htpasswd with a non-bcrypt entry", auth("  htpasswd: " + md5Htpasswd + "\n"),
			[]string{"auth.htpasswd", md5Htpasswd + " line 2", `user "bob"`, "bcrypt only", "htpasswd -B"}, []string{"Hunter2Salt"}},
		{"htpasswd without users", auth("  htpasswd: " + emptyHtpasswd + "\n"),
			[]string{"auth.htpasswd", "holds no users"}, nil},

		{"webhook unknown format", hook("format: xml"),
			[]string{`events.webhooks[0].format: unknown format "xml" (regcache, cloudevents, dockerhub, template)`}, nil},
		{"webhook empty format", hook(`format: ""`), []string{`events.webhooks[0].format: unknown format ""`}, nil},
		{"webhook unknown key", hook("retries: 3"), []string{"events.webhooks[0].retries: unknown key", "max_retries"}, nil},
		{"webhook unknown filter key", hook("filter: {image: [a]}"), []string{"events.webhooks[0].filter.image: unknown key", "images"}, nil},
		{"webhooks is a mapping", "events:\n  webhooks:\n    url: http://x\n" + minimalUpstream, []string{"events.webhooks: expected a list"}, nil},
		{"webhook without url", "events:\n  webhooks:\n    - format: regcache\n" + minimalUpstream, []string{"events.webhooks[0].url: not a URL"}, nil},
		{"webhook url without scheme", "events:\n  webhooks:\n    - url: hooks.example/x\n" + minimalUpstream,
			[]string{"events.webhooks[0].url: scheme must be http or https"}, nil},
		{"webhook url with credentials", "events:\n  webhooks:\n    - url: https://bob:Hunter2Pw@hooks.example/x\n" + minimalUpstream,
			[]string{"events.webhooks[0].url: put credentials in headers"}, []string{"Hunter2Pw"}},
		{"webhook placeholder without template", "events:\n  webhooks:\n    - url: http://wt/v1/update?image={{.Image}}\n" + minimalUpstream,
			[]string{"events.webhooks[0].url: placeholders such as {{.Image}} need format: template"}, nil},
		{"webhook unknown placeholder", "events:\n  webhooks:\n    - url: http://wt/v1/update?image={{.Name}}&token=QueryTok3n\n      format: template\n" + minimalUpstream,
			[]string{"events.webhooks[0].url", "the placeholders are {{.Image}}"}, []string{"QueryTok3n"}},
		{"webhook placeholder in host", "events:\n  webhooks:\n    - url: http://{{.Repository}}.example/\n      format: template\n" + minimalUpstream,
			[]string{"events.webhooks[0].url: placeholders may stand in the path and query only"}, nil},
		{"second webhook bad", hook("") + "    - url: ftp://hooks.example/\n", []string{"events.webhooks[1].url: scheme must be http or https"}, nil},
		{"webhook names collide", hook("") + "    - url: http://hooks.example/x?other=1\n",
			[]string{`events.webhooks[1].name: "hooks.example" is already used by events.webhooks[0]`, "set name:"}, nil},
		{"webhook zero timeout", hook("timeout: 0s"), []string{"events.webhooks[0].timeout: must be above zero (e.g. 10s)"}, nil},
		{"webhook negative max_retries", hook("max_retries: -1"), []string{"events.webhooks[0].max_retries: must be from 0 to 100"}, nil},
		{"webhook zero queue_size", hook("queue_size: 0"), []string{"events.webhooks[0].queue_size: must be from 1 to 100000 (e.g. 1000)"}, nil},
		{"webhook huge queue_size", hook("queue_size: 1000000"), []string{"events.webhooks[0].queue_size: must be from 1 to 100000"}, nil},
		{"webhook unset variable in a header", hook("headers:\n        Authorization: Bearer ${REGCACHE_TEST_SURELY_UNSET}"),
			[]string{"events.webhooks[0].headers.Authorization", "REGCACHE_TEST_SURELY_UNSET is not set"}, nil},
		{"webhook header name", hook("headers:\n        \"X Token\": Hunter2Hdr"), []string{"events.webhooks[0].headers.X Token: not a header name"}, []string{"Hunter2Hdr"}},
		{"webhook header regcache sets", hook("headers:\n        x-regcache-signature: Hunter2Hdr"),
			[]string{"events.webhooks[0].headers.x-regcache-signature: regcache (or HTTP itself) sets this header"}, []string{"Hunter2Hdr"}},
		{"webhook empty header", hook("headers:\n        X-Token:"), []string{"events.webhooks[0].headers.X-Token: must not be empty"}, nil},
		{"webhook headers is a list", hook("headers: [a]"), []string{"events.webhooks[0].headers: expected a mapping"}, nil},
		{"webhook filter type", hook("filter: {types: [tag.changed, tag.pushed]}"),
			[]string{`events.webhooks[0].filter.types[1]: unknown type "tag.pushed" (tag.changed, tag.created, tag.deleted)`}, nil},
		{"webhook filter registry", hook("filter: {registries: [quay.io]}"), []string{`events.webhooks[0].filter.registries[0]: "quay.io" is no upstream name`}, nil},
		{"webhook filter alias", "upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n    aliases: [hub]\n" +
			"events:\n  webhooks:\n    - url: http://hooks.example/x\n      filter: {images: [hub/library/nginx]}\n",
			[]string{`events.webhooks[0].filter.images[0]: "hub": events name the upstream "docker.io"`}, nil},
		{"webhook filter image", hook("filter: {images: [nginx]}"), []string{`events.webhooks[0].filter.images[0]: "nginx" is not registry/repository[:tag]`}, nil},
		{"webhook filter official image", hook("filter: {images: [docker.io/nginx]}"),
			[]string{`events.webhooks[0].filter.images[0]: "docker.io/nginx": events name Docker Hub's official images under library/ (docker.io/library/nginx)`}, nil},
		{"webhook filter digest", hook("filter: {images: ['docker.io/library/nginx@sha256:abc']}"),
			[]string{`events.webhooks[0].filter.images[0]: "docker.io/library/nginx@sha256:abc" names a digest`}, nil},
		{"webhook header control character", hook("headers:\n        X-Token: \"Hunter2\\x01Hdr\""),
			[]string{"events.webhooks[0].headers.X-Token: the value must be one line, without control characters"}, []string{"Hunter2"}},
		{"webhook hop-by-hop header", hook("headers:\n        Upgrade: h2c"), []string{"events.webhooks[0].headers.Upgrade: regcache (or HTTP itself) sets this header"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.text))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want an error containing %q\n--- input ---\n%s", cfg, tc.want, tc.text)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config together with error %v", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(msg, n) {
					t.Errorf("error %q must not contain %q", msg, n)
				}
			}
		})
	}
}

// TestURLErrorsNeverLeakPassword feeds URLs with a password in their user-info through every
// branch of URL validation: none may echo it.
func TestURLErrorsNeverLeakPassword(t *testing.T) {
	const pw = "Pa55wordXYZ"
	tests := []struct {
		name string
		url  string
	}{
		{"valid otherwise", "https://bob:" + pw + "@registry.example"},
		{"with path", "https://bob:" + pw + "@registry.example/v2/"},
		{"with query", "https://bob:" + pw + "@registry.example?x=1"},
		{"wrong scheme", "ftp://bob:" + pw + "@registry.example"},
		{"no scheme", "bob:" + pw + "@registry.example"},
		{"no host", "https://bob:" + pw + "@"},
		{"unparseable port", "https://bob:" + pw + "@registry.example:port"},
		{"bad percent escape", "https://bob:" + pw + "%zz@registry.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := "upstreams:\n  - name: docker.io\n    url: \"" + tc.url + "\"\n"
			_, err := Parse([]byte(text))
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error", tc.url)
			}
			if !strings.Contains(err.Error(), "upstreams[0].url") {
				t.Errorf("error %q does not name upstreams[0].url", err)
			}
			if strings.Contains(err.Error(), pw) {
				t.Fatalf("error leaks the URL password: %q", err)
			}
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	const (
		set   = "REGCACHE_TEST_SET"
		empty = "REGCACHE_TEST_EMPTY"
		unset = "REGCACHE_TEST_UNSET"
		other = "REGCACHE_TEST_OTHER"
	)
	tests := []struct {
		name    string
		env     map[string]string // "" value sets the variable to empty
		text    string
		wantErr []string
		check   func(t *testing.T, c *Config)
	}{
		{
			name: "set variable is substituted",
			env:  map[string]string{set: ":6000"},
			text: "listen: ${" + set + "}\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":6000" {
					t.Errorf("Listen = %q, want :6000", c.Listen)
				}
			},
		},
		{
			name: "default used when unset",
			text: "listen: \"${" + unset + ":-:7000}\"\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":7000" {
					t.Errorf("Listen = %q, want :7000", c.Listen)
				}
			},
		},
		{
			name: "default used when set but empty",
			env:  map[string]string{empty: ""},
			text: "listen: \"${" + empty + ":-:7001}\"\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":7001" {
					t.Errorf("Listen = %q, want :7001", c.Listen)
				}
			},
		},
		{
			name: "set value wins over default",
			env:  map[string]string{set: ":6001"},
			text: "listen: \"${" + set + ":-:7000}\"\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":6001" {
					t.Errorf("Listen = %q, want :6001", c.Listen)
				}
			},
		},
		{
			name:    "unset variable is an error naming it and the key",
			text:    minimalUpstream + "    credentials:\n      username: bot\n      password: ${" + unset + "}\n",
			wantErr: []string{"upstreams[0].credentials.password", unset, "is not set", "${" + unset + ":-default}"},
		},
		{
			name:    "unset variable in top-level key",
			text:    "listen: ${" + unset + "}\n" + minimalUpstream,
			wantErr: []string{"listen:", "environment variable " + unset + " is not set", "line 1"},
		},
		{
			name: "several variables in one value",
			env:  map[string]string{set: "mirror.example", other: "8443"},
			text: "upstreams:\n  - name: docker.io\n    url: https://${" + set + "}:${" + other + "}\n",
			check: func(t *testing.T, c *Config) {
				if c.Upstreams[0].URL != "https://mirror.example:8443" {
					t.Errorf("URL = %q", c.Upstreams[0].URL)
				}
			},
		},
		{
			name: "size, durations and bools may come from env",
			env:  map[string]string{set: "1GiB", other: "5m", "REGCACHE_TEST_BOOL": "true", "REGCACHE_TEST_TIMEOUT": "90s"},
			text: "cache:\n  max_size: ${" + set + "}\n  tag_ttl: ${" + other + "}\n" + minimalUpstream +
				"    strict_accept: ${REGCACHE_TEST_BOOL}\n    timeout: ${REGCACHE_TEST_TIMEOUT}\n    tag_ttl: ${" + other + "}\n",
			check: func(t *testing.T, c *Config) {
				if c.Cache.MaxSize != 1<<30 {
					t.Errorf("MaxSize = %d, want 1GiB", c.Cache.MaxSize)
				}
				if c.Cache.TagTTL.D() != 5*time.Minute {
					t.Errorf("TagTTL = %v, want 5m", c.Cache.TagTTL.D())
				}
				u := &c.Upstreams[0]
				if !u.StrictAccept || u.Timeout.D() != 90*time.Second || c.TagTTLFor(u) != 5*time.Minute {
					t.Errorf("upstream = strict %v timeout %v tag_ttl %v", u.StrictAccept, u.Timeout.D(), c.TagTTLFor(u))
				}
			},
		},
		{
			name: "size and duration defaults from ${VAR:-default}",
			text: "cache:\n  max_size: ${" + unset + ":-512KiB}\n  max_stale: ${" + unset + ":-2h}\n" + minimalUpstream,
			check: func(t *testing.T, c *Config) {
				if c.Cache.MaxSize != 512<<10 || c.Cache.MaxStale.D() != 2*time.Hour {
					t.Errorf("MaxSize=%d MaxStale=%v", c.Cache.MaxSize, c.Cache.MaxStale.D())
				}
			},
		},
		{
			name:    "bad size from env names key and value",
			env:     map[string]string{set: "huge"},
			text:    "cache:\n  max_size: ${" + set + "}\n" + minimalUpstream,
			wantErr: []string{"cache.max_size", `"huge" is not a size`},
		},
		{
			name:    "bad duration from env names key and value",
			env:     map[string]string{set: "forever"},
			text:    "cache:\n  tag_ttl: ${" + set + "}\n" + minimalUpstream,
			wantErr: []string{"cache.tag_ttl", `"forever" is not a duration`},
		},
		{
			name: "aliases expand per item",
			env:  map[string]string{set: "hub"},
			text: minimalUpstream + "    aliases: [\"${" + set + "}\", \"${" + unset + ":-dh}\"]\n",
			check: func(t *testing.T, c *Config) {
				if !slices.Equal(c.Upstreams[0].Aliases, []string{"hub", "dh"}) {
					t.Errorf("Aliases = %q", c.Upstreams[0].Aliases)
				}
			},
		},
		{
			name: "expanded value is not expanded again",
			env:  map[string]string{set: "${" + unset + "}"},
			text: minimalUpstream + "    credentials:\n      username: bot\n      password: ${" + set + "}\n",
			check: func(t *testing.T, c *Config) {
				if got := reveal(c.Upstreams[0].Credentials.Password); got != "${"+unset+"}" {
					t.Errorf("Password = %q, want the literal ${%s}", got, unset)
				}
			},
		},
		{
			name: "keys are never expanded",
			env:  map[string]string{set: "listen"},
			text: "${" + set + "}: \":1\"\n" + minimalUpstream,
			wantErr: []string{
				"${" + set + "}: unknown key",
			},
		},
		{
			name: "comments are not expanded",
			text: "# listen: ${" + unset + "}\n" + minimalUpstream + "    # ${" + unset + "}\n",
			check: func(t *testing.T, c *Config) {
				if c.Listen != ":5000" {
					t.Errorf("Listen = %q", c.Listen)
				}
			},
		},
		{
			name:    "unclosed reference",
			text:    "listen: \"${" + set + "\"\n" + minimalUpstream,
			wantErr: []string{"listen:", "unclosed ${"},
		},
		{
			name:    "empty variable name",
			text:    "listen: \"${}\"\n" + minimalUpstream,
			wantErr: []string{"listen:", "empty variable name"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{set, empty, unset, other} {
				unsetEnv(t, v)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, err := Parse([]byte(tc.text))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Parse succeeded, want error containing %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v\n--- input ---\n%s", err, tc.text)
			}
			tc.check(t, cfg)
		})
	}
}

// TestEnvSecretNoInjection checks that a value taken from the environment is used as the
// scalar's text and is never parsed as YAML, whatever it contains.
func TestEnvSecretNoInjection(t *testing.T) {
	secrets := []struct {
		name  string
		value string
	}{
		{"colon space and hash", "p4ss: word # not a comment"},
		{"newline with a key", "abc\nlisten: \":9999\"\ndefault_upstream: evil"},
		{"flow and quote characters", `{a: [b, "c'd"]} & *x !!int |`},
		{"leading dash and trailing spaces", "- item   "},
		{"dollar brace literal", "$${NOT_A_VAR}"},
		{"unicode", "pässwörd—✓"},
	}
	for _, s := range secrets {
		t.Run(s.name, func(t *testing.T) {
			t.Setenv("REGCACHE_TEST_PW", s.value)
			t.Setenv("REGCACHE_TEST_USER", s.value)
			text := minimalUpstream + "    credentials:\n      username: ${REGCACHE_TEST_USER}\n      password: ${REGCACHE_TEST_PW}\n"
			cfg := mustParse(t, text)
			cr := cfg.Upstreams[0].Credentials
			if cr == nil {
				t.Fatal("Credentials = nil")
			}
			if reveal(cr.Password) != s.value {
				t.Errorf("Password = %q, want %q", reveal(cr.Password), s.value)
			}
			if cr.Username != s.value {
				t.Errorf("Username = %q, want %q", cr.Username, s.value)
			}
			if cfg.Listen != ":5000" || cfg.DefaultUpstream != "docker.io" || len(cfg.Upstreams) != 1 {
				t.Errorf("document was altered by the secret: listen %q default %q upstreams %d",
					cfg.Listen, cfg.DefaultUpstream, len(cfg.Upstreams))
			}
		})
	}
}

func TestExpandEnv(t *testing.T) {
	t.Setenv("REGCACHE_TEST_A", "alpha")
	t.Setenv("REGCACHE_TEST_B", "beta")
	t.Setenv("REGCACHE_TEST_E", "")
	unsetEnv(t, "REGCACHE_TEST_U")

	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"", "", ""},
		{"plain text", "plain text", ""},
		{"$REGCACHE_TEST_A", "$REGCACHE_TEST_A", ""}, // only ${...} is special
		{"${REGCACHE_TEST_A}", "alpha", ""},
		{"x${REGCACHE_TEST_A}y${REGCACHE_TEST_B}z", "xalphaybetaz", ""},
		{"${REGCACHE_TEST_A}${REGCACHE_TEST_A}", "alphaalpha", ""},
		{"${REGCACHE_TEST_U:-fallback}", "fallback", ""},
		{"${REGCACHE_TEST_U:-}", "", ""},
		{"${REGCACHE_TEST_U:-a:-b}", "a:-b", ""},
		{"${REGCACHE_TEST_E}", "", ""}, // set but empty: the user chose empty
		{"${REGCACHE_TEST_E:-d}", "d", ""},
		{"${REGCACHE_TEST_A:-d}", "alpha", ""},
		{"$${REGCACHE_TEST_A}", "$alpha", ""},
		{"${REGCACHE_TEST_U}", "", "environment variable REGCACHE_TEST_U is not set"},
		{"ok ${REGCACHE_TEST_A} then ${REGCACHE_TEST_U}", "", "REGCACHE_TEST_U is not set"},
		{"${REGCACHE_TEST_A", "", "unclosed ${"},
		{"${}", "", "empty variable name"},
		{"${:-x}", "", "empty variable name"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := expandEnv(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("expandEnv(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("expandEnv(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr bool
	}{
		{"512KiB", 512 << 10, false},
		{"256MiB", 256 << 20, false},
		{"1GiB", 1 << 30, false},
		{"2TiB", 2 << 40, false},
		{"1048576", 1 << 20, false},
		{"10B", 10, false},
		{"0", 0, false},
		{"0B", 0, false},
		{"1KB", 1 << 10, false},
		{"64MB", 64 << 20, false},
		{"3GB", 3 << 30, false},
		{" 64 MiB ", 64 << 20, false},
		{"4194304TiB", 1 << 62, false}, // the largest accepted value

		{"abc", 0, true},
		{"-1", 0, true},
		{"-1KiB", 0, true},
		{"1.5GiB", 0, true},
		{"", 0, true},
		{"   ", 0, true},
		{"GiB", 0, true},
		{"B", 0, true},
		{"1kib", 0, true},
		{"1 G", 0, true},
		{"1PiB", 0, true},
		{"0x10", 0, true},
		{"1e6", 0, true},
		{"99999999999999999999", 0, true}, // overflows int64
		{"4194305TiB", 0, true},           // would overflow after multiplying
		{"8589934592GiB", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseSize(%q) = %d, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
					t.Errorf("error %q does not quote the input %q", err, tc.in)
				}
				if !strings.Contains(err.Error(), "256MiB") {
					t.Errorf("error %q does not give an example", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSize(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("ParseSize(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	const pw = "hunter2-Sup3rS3cret"
	cfg := mustParse(t, minimalUpstream+"    credentials:\n      username: alice\n      password: \""+pw+"\"\n")
	if reveal(cfg.Upstreams[0].Credentials.Password) != pw {
		t.Fatalf("Password = %q, want %q (the value must stay usable)", reveal(cfg.Upstreams[0].Credentials.Password), pw)
	}
	creds := *cfg.Upstreams[0].Credentials

	values := []struct {
		name         string
		v            any
		wantRedacted bool // the output must show that something was hidden
	}{
		{"Secret", creds.Password, true},
		{"Credentials", creds, true},
		{"*Credentials", &creds, true},
		{"Upstream", cfg.Upstreams[0], false},
		{"*Upstream", &cfg.Upstreams[0], false},
		{"Config", *cfg, false},
		{"*Config", cfg, false},
		{"[]Upstream", cfg.Upstreams, false},
		{"struct holding Credentials by value", struct{ C Credentials }{creds}, true},
		{"map of Secret", map[string]Secret{"pw": creds.Password}, true},
	}
	verbs := []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%X", "%d"}
	for _, val := range values {
		for _, verb := range verbs {
			t.Run(val.name+" "+verb, func(t *testing.T) {
				out := fmt.Sprintf(verb, val.v)
				for _, leak := range []string{pw, fmt.Sprintf("%x", pw), fmt.Sprintf("%X", pw)} {
					if !strings.Contains(out, leak) {
						continue
					}
					// fmt's bad-verb path ("%!s(*configs.Credentials=&{...})") skips
					// String/GoString/Format; Secret keeps its value behind a pointer so that
					// even that path cannot print it.
					t.Fatalf("fmt.Sprintf(%q, %s) leaks the secret: %s", verb, val.name, out)
				}
				if val.wantRedacted && (verb == "%v" || verb == "%s" || verb == "%+v" || verb == "%#v") &&
					!strings.Contains(out, "REDACTED") {
					t.Errorf("fmt.Sprintf(%q, %s) = %s, want REDACTED in it", verb, val.name, out)
				}
			})
		}
	}

	t.Run("Print family and errors", func(t *testing.T) {
		outs := []string{
			fmt.Sprint(creds, &creds, cfg, *cfg),
			fmt.Sprintln(creds, &creds, cfg, *cfg),
			fmt.Errorf("login with %v failed: %w", creds, fmt.Errorf("%+v", &creds)).Error(),
		}
		for _, out := range outs {
			if strings.Contains(out, pw) {
				t.Errorf("output leaks the secret: %s", out)
			}
		}
	})

	t.Run("String and GoString", func(t *testing.T) {
		if got := secret(pw).String(); got != "REDACTED" {
			t.Errorf("String() = %q", got)
		}
		if got := secret(pw).GoString(); got != `"REDACTED"` {
			t.Errorf("GoString() = %q", got)
		}
		if got := secret("").String(); got != "" {
			t.Errorf("empty String() = %q, want empty", got)
		}
		if got := fmt.Sprintf("%#v", Credentials{Username: "u"}); !strings.Contains(got, `Password:""`) {
			t.Errorf("%%#v of empty secret = %s", got)
		}
	})
}

func TestLoadFiles(t *testing.T) {
	t.Run("missing file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope", "regcache.yaml")
		cfg, err := Load(p)
		if err == nil {
			t.Fatalf("Load(%q) = %+v, want an error", p, cfg)
		}
		if !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), p) {
			t.Errorf("error %q should say that %s does not exist", err, p)
		}
	})

	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), "reading config") {
			t.Errorf("Load(dir) error = %v, want a reading config error", err)
		}
	})

	t.Run("valid temp file", func(t *testing.T) {
		p := writeFile(t, "regcache.yaml", "listen: \":8080\"\ndefault_upstream: gh\n"+
			"upstreams:\n  - name: ghcr.io\n    url: https://ghcr.io\n    aliases: [gh]\n    tag_ttl: 15s\n")
		cfg, err := Load(p)
		if err != nil {
			t.Fatalf("Load(%q): %v", p, err)
		}
		if cfg.Listen != ":8080" || len(cfg.Upstreams) != 1 || cfg.Upstreams[0].Name != "ghcr.io" {
			t.Errorf("cfg = %+v", cfg)
		}
		if got := cfg.TagTTLFor(cfg.Lookup("gh")); got != 15*time.Second {
			t.Errorf("TagTTLFor(gh) = %v, want 15s", got)
		}
	})

	t.Run("embedded default written to a file", func(t *testing.T) {
		p := writeFile(t, "default.yaml", string(Default()))
		fromFile, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		embedded, err := Load("")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fromFile, embedded) {
			t.Errorf("file copy of the default parses differently:\n%+v\n%+v", fromFile, embedded)
		}
	})

	t.Run("invalid file names the file and the key", func(t *testing.T) {
		p := writeFile(t, "bad.yaml", "cache:\n  tag_ttl: nope\n"+minimalUpstream)
		_, err := Load(p)
		if err == nil {
			t.Fatal("Load succeeded, want an error")
		}
		for _, w := range []string{p, "cache.tag_ttl", `"nope" is not a duration`} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
	})
}

func TestLookup(t *testing.T) {
	cfg := mustParse(t, minimalUpstream+"    aliases: [hub]\n  - name: quay.io\n    url: https://quay.io\n")
	tests := []struct {
		name string
		want string // "" means nil
	}{
		{"docker.io", "docker.io"},
		{"DOCKER.IO", "docker.io"},
		{"hub", "docker.io"},
		{"Hub", "docker.io"},
		{"quay.io", "quay.io"},
		{"ghcr.io", ""},
		{"", ""},
		{"docker", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u := cfg.Lookup(tc.name)
			switch {
			case tc.want == "" && u != nil:
				t.Errorf("Lookup(%q) = %s, want nil", tc.name, u.Name)
			case tc.want != "" && (u == nil || u.Name != tc.want):
				t.Errorf("Lookup(%q) = %v, want %s", tc.name, u, tc.want)
			}
		})
	}
	// Lookup returns a pointer into the config, not a copy.
	if cfg.Lookup("hub") != &cfg.Upstreams[0] {
		t.Error("Lookup does not point into cfg.Upstreams")
	}
}

// TestOnceKnownGaps: behaviour that was once wrong, now refused; each would pass silently
// again if it came back, so each fails instead.
func TestOnceKnownGaps(t *testing.T) {
	t.Run("duplicate mapping keys are refused", func(t *testing.T) {
		// A second upstreams: block (e.g. appended by a config-management tool) would
		// silently replace the first one.
		text := "listen: \":1\"\nlisten: \":2\"\n" +
			"upstreams:\n  - name: ghcr.io\n    url: https://ghcr.io\n" + minimalUpstream
		cfg, err := Parse([]byte(text))
		if err == nil {
			t.Fatalf("duplicate keys accepted, last wins (listen=%q, ghcr.io dropped: Lookup=%v)",
				cfg.Listen, cfg.Lookup("ghcr.io"))
		}
		if !strings.Contains(err.Error(), "listen") {
			t.Errorf("error %q should name the duplicated key", err)
		}
	})

	t.Run("literal ${ in a password is not echoed in the error", func(t *testing.T) {
		const pw = "Abc${defSecret"
		_, err := Parse([]byte(minimalUpstream + "    credentials:\n      username: u\n      password: \"" + pw + "\"\n"))
		if err == nil {
			t.Fatal("want an unclosed ${ error")
		}
		if strings.Contains(err.Error(), pw) {
			t.Fatalf("the literal password leaks in %q", err)
		}
	})
}

func TestDurationD(t *testing.T) {
	for _, d := range []time.Duration{0, time.Nanosecond, 1500 * time.Millisecond, -time.Hour} {
		if got := Duration(d).D(); got != d {
			t.Errorf("Duration(%v).D() = %v", d, got)
		}
	}
}

func TestParseHtpasswd(t *testing.T) {
	alice, bob := bcryptHash(t, "alice-pw"), bcryptHash(t, "bob-pw")
	// htpasswd -B writes $2y$; Go's bcrypt writes $2a$; both verify the same way.
	bobY := "$2y$" + strings.TrimPrefix(bob, "$2a$")

	tests := []struct {
		name    string
		text    string
		want    map[string]string
		wantErr []string // all must appear in the error
		not     string   // must not appear in the error
	}{
		{"one user", "alice:" + alice + "\n", map[string]string{"alice": alice}, nil, ""},
		{"comments, blank lines, CRLF and no final newline",
			"# regcache users\r\n\r\nalice:" + alice + "\r\n   \n  bob:" + bobY,
			map[string]string{"alice": alice, "bob": bobY}, nil, ""},
		{"user names may hold dots, @ and dashes", "ci-bot@example.com:" + alice + "\n",
			map[string]string{"ci-bot@example.com": alice}, nil, ""},

		{"MD5-crypt entry", "alice:" + alice + "\nbob:$apr1$Pl41nS4lt$0123456789abcdefghijkl\n", nil,
			[]string{"htpasswd line 2", `user "bob"`, "not a bcrypt hash", "htpasswd -B"}, "Pl41nS4lt"},
		{"SHA-1 entry", "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", nil,
			[]string{"htpasswd line 1", `user "carol"`, "bcrypt only"}, "W6ph5Mm5"},
		{"plain-text entry", "# header\ndave:Hunter2Plain\n", nil,
			[]string{"htpasswd line 2", `user "dave"`, "not a bcrypt hash"}, "Hunter2Plain"},
		{"crypt(3) entry", "erin:rqXexS6ZhobKA\n", nil, []string{"line 1", `user "erin"`, "bcrypt only"}, "rqXexS6Z"},
		{"truncated bcrypt", "frank:$2y$05$tooShort\n", nil,
			[]string{"line 1", `user "frank"`, "malformed bcrypt hash"}, "tooShort"},
		{"no colon", "alice:" + alice + "\njustaname\n", nil, []string{"line 2", "want user:hash"}, ""},
		{"empty user", ":" + alice + "\n", nil, []string{"line 1", "empty user name"}, ""},
		{"user twice", "alice:" + alice + "\nbob:" + bob + "\nalice:" + bob + "\n", nil,
			[]string{"line 3", `user "alice" appears twice`}, ""},
		{"only comments", "# none\n\n", nil, []string{"holds no users", "htpasswd -B"}, ""},
		{"empty file", "", nil, []string{"holds no users"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHtpasswd("htpasswd", []byte(tc.text))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("ParseHtpasswd = %v, want an error containing %q", got, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if tc.not != "" && strings.Contains(err.Error(), tc.not) {
					t.Errorf("error %q echoes the hash or password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHtpasswd: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseHtpasswd = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("ReadHtpasswd reads a file", func(t *testing.T) {
		p := writeFile(t, "htpasswd", "alice:"+alice+"\n")
		got, err := ReadHtpasswd(p)
		if err != nil || got["alice"] != alice {
			t.Fatalf("ReadHtpasswd = %v, %v", got, err)
		}
		_, err = ReadHtpasswd(filepath.Join(t.TempDir(), "missing"))
		if err == nil || !os.IsNotExist(err) {
			t.Errorf("ReadHtpasswd(missing) error = %v, want not-exist", err)
		}
	})
}

func TestAuthSecretsNeverPrinted(t *testing.T) {
	const tok, key = "Static-T0ken-Hunter2", "HmacKey-0123456789abcdef0123456789"
	t.Setenv("REGCACHE_TEST_TOKEN", tok)
	cfg := mustParse(t, "auth:\n  tokens: [\"${REGCACHE_TEST_TOKEN}\"]\n  secret: "+key+"\n"+minimalUpstream)
	if len(cfg.Auth.Tokens) != 1 || reveal(cfg.Auth.Tokens[0]) != tok || reveal(cfg.Auth.Secret) != key {
		t.Fatalf("Auth = tokens %d, values not kept", len(cfg.Auth.Tokens))
	}
	for _, v := range []any{cfg, *cfg, cfg.Auth, &cfg.Auth, cfg.Auth.Tokens} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			out := fmt.Sprintf(verb, v)
			if strings.Contains(out, tok) || strings.Contains(out, key) {
				t.Errorf("fmt.Sprintf(%q, %T) leaks an auth secret: %s", verb, v, out)
			}
		}
	}
}

// TestWarnings: settings that load but are likely mistakes are reported at start, by key and
// without their values.
func TestWarnings(t *testing.T) {
	const key = "HmacKey-0123456789abcdef0123456789"
	for _, tc := range []struct {
		name, text string
		want       []string // substrings, one warning each; none when empty
	}{
		{"auth off, no secret", minimalUpstream, nil},
		{"auth on with a secret", "auth:\n  tokens: [static-token-0123456789]\n  secret: " + key + "\n" + minimalUpstream, nil},
		// An auth-off replica issues anonymous tokens under the shared key.
		{"secret with auth off", "auth:\n  secret: " + key + "\n" + minimalUpstream, []string{"auth.secret is set but auth is off"}},
		{"auth on without a secret", "auth:\n  tokens: [static-token-0123456789]\n" + minimalUpstream, []string{"auth.secret is not set"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mustParse(t, tc.text).Warnings()
			if len(got) != len(tc.want) {
				t.Fatalf("warnings %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || strings.Contains(got[i], key) {
					t.Errorf("warning %q, want it to say %q (and not the key)", got[i], w)
				}
			}
		})
	}
}

func TestParseWebhooks(t *testing.T) {
	t.Setenv("REGCACHE_TEST_WT_TOKEN", "wt-Sup3rS3cret")
	cfg := mustParse(t, minimalUpstream+`    aliases: [hub]
events:
  webhooks:
    - url: https://hooks.example.com/regcache?token=q
      secret: hook-s3cret-value
    - name: watchtower
      url: http://watchtower:8080/v1/update?image={{.Image}}
      format: template
      headers:
        Authorization: Bearer ${REGCACHE_TEST_WT_TOKEN}
        x-source: regcache
      filter:
        images: [docker.io/library/nginx, docker.io/library/redis:7]
        registries: [docker.io]
        types: [tag.changed, tag.created]
      timeout: 3s
      max_retries: 0
      queue_size: 50
`)
	hooks := cfg.Events.Webhooks
	if len(hooks) != 2 {
		t.Fatalf("%d webhooks", len(hooks))
	}
	first := hooks[0]
	if first.Name != "hooks.example.com" || first.Format != "regcache" || first.Timeout.D() != 10*time.Second ||
		first.MaxRetries != 5 || first.QueueSize != 1000 || reveal(first.Secret) != "hook-s3cret-value" || first.Headers != nil {
		t.Errorf("first hook %+v: want the defaults, and its URL's host as its name", first)
	}
	wt := hooks[1]
	wantFilter := EventFilter{Images: []string{"docker.io/library/nginx", "docker.io/library/redis:7"}, Registries: []string{"docker.io"},
		Types: []string{"tag.changed", "tag.created"}}
	if wt.Name != "watchtower" || wt.Format != "template" || wt.Timeout.D() != 3*time.Second || wt.MaxRetries != 0 ||
		wt.QueueSize != 50 || !reflect.DeepEqual(wt.Filter, wantFilter) {
		t.Errorf("second hook %+v (max_retries: 0 is kept: no retries)", wt)
	}
	if len(wt.Headers) != 2 || reveal(wt.Headers["Authorization"]) != "Bearer wt-Sup3rS3cret" || reveal(wt.Headers["x-source"]) != "regcache" {
		t.Errorf("headers: ${VAR} is expanded from the environment")
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%d"} {
		out := fmt.Sprintf(verb, cfg.Events)
		for _, leak := range []string{"wt-Sup3rS3cret", "hook-s3cret-value", fmt.Sprintf("%x", "wt-Sup3rS3cret")} {
			if strings.Contains(out, leak) {
				t.Fatalf("%s of the events config shows a secret: %s", verb, out)
			}
		}
	}
}

func TestParseBudget(t *testing.T) {
	cfg := mustParse(t, minimalUpstream+"    budget: {requests: 100, per: 1m}\n    budget_share: 0%\n"+
		"  - name: ghcr.io\n    url: https://ghcr.io\n    budget: auto\n    budget_share: 25\n")
	if b := cfg.Upstreams[0].Budget; b.Auto() || b.Requests != 100 || b.Per.D() != time.Minute || cfg.Upstreams[0].BudgetShare != 0 {
		t.Fatalf("upstreams[0]: budget %+v, share %d; want 100 per 1m, 0%%", b, cfg.Upstreams[0].BudgetShare)
	}
	if u := cfg.Upstreams[1]; !u.Budget.Auto() || u.BudgetShare != 25 {
		t.Fatalf("upstreams[1]: budget %+v, share %d; want auto, 25%%", u.Budget, u.BudgetShare)
	}
}
