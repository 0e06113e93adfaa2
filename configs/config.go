// Package configs holds regcache's configuration: the Config type, the embedded default
// (regcache.yaml) and the loader that validates a file once at start-up, with errors that
// name the key and say how to fix it.
package configs

import (
	_ "embed"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"regcache/internal/hostname"
)

//go:embed regcache.yaml
var defaultYAML []byte

// Default returns the embedded default configuration text.
func Default() []byte { return append([]byte(nil), defaultYAML...) }

// Config is the whole of regcache's configuration.
type Config struct {
	Listen          string     `yaml:"listen"`
	DefaultUpstream string     `yaml:"default_upstream"`
	Cache           Cache      `yaml:"cache"`
	Upstreams       []Upstream `yaml:"upstreams"`
	// PublicURL is how clients reach regcache (https://regcache.example), when a proxy in
	// front of it changes scheme or host; it makes the token realm in challenges.
	PublicURL string `yaml:"public_url"`
	// TrustForwardedHeaders takes the challenge realm's scheme and host from
	// X-Forwarded-Proto and X-Forwarded-Host. Only behind a proxy that sets them.
	TrustForwardedHeaders bool `yaml:"trust_forwarded_headers"`
	Auth                  Auth `yaml:"auth"`
	// Server holds the client-facing limits: timeouts, header and body sizes, connections.
	Server Server `yaml:"server"`
	// MetricsListen, when set, serves /metrics on this address too, without client auth
	// (for a scraper that holds no credentials; keep the address off clients' reach). On
	// listen, /metrics stays behind auth.
	MetricsListen string `yaml:"metrics_listen"`
}

// Auth is client-facing authentication. With neither htpasswd nor tokens it is off: any
// client may ask, and tokens are issued anonymously.
type Auth struct {
	// Htpasswd is a file of user:bcrypt-hash lines (htpasswd -B).
	Htpasswd string `yaml:"htpasswd"`
	// Tokens are static bearer tokens; each may also be sent as a Basic password.
	Tokens []Secret `yaml:"tokens"`
	// Secret signs the tokens regcache issues; replicas behind one name share it. Unset,
	// each process draws a random one (its tokens then work on that process only).
	Secret Secret `yaml:"secret"`
	// TokenTTL is how long an issued token is valid.
	TokenTTL Duration `yaml:"token_ttl"`
}

// CheckListeners refuses a metrics_listen that would take listen's port: the same port
// on the same host, or on every address (":5000" and "0.0.0.0:5000" collide). Load calls
// it; call it again after overriding Listen (the -listen flag).
func (c *Config) CheckListeners() error {
	if c.MetricsListen == "" {
		return nil
	}
	h1, p1, err1 := net.SplitHostPort(c.Listen)
	h2, p2, err2 := net.SplitHostPort(c.MetricsListen)
	if err1 != nil || err2 != nil || p1 != p2 || p1 == "0" { // port 0: each its own
		return nil
	}
	wildcard := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	if h1 == h2 || wildcard(h1) || wildcard(h2) {
		return fmt.Errorf("metrics_listen: %q takes listen's port (%q); use another, e.g. \":9090\"", c.MetricsListen, c.Listen)
	}
	return nil
}

// Enabled reports whether clients must authenticate.
func (a *Auth) Enabled() bool { return a.Htpasswd != "" || len(a.Tokens) > 0 }

// Cache configures the in-process cache and its freshness rules.
type Cache struct {
	MaxSize        Size     `yaml:"max_size"`
	TagTTL         Duration `yaml:"tag_ttl"`
	MaxStale       Duration `yaml:"max_stale"`
	NegativeTTL    Duration `yaml:"negative_ttl"`
	RevalidateWait Duration `yaml:"revalidate_wait"`
	// MaxBlobSize is the largest blob (an image config, typically) kept in memory.
	MaxBlobSize Size `yaml:"max_blob_size"`
	// TagsMaxPagesPerRequest bounds the upstream pages one client's tags request may cost;
	// a longer listing is read on, this many pages at a time, by the requests that follow
	// regcache's Links (or any client's).
	TagsMaxPagesPerRequest int `yaml:"tags_max_pages_per_request"`
	// TagsMaxCount and TagsMaxBytes bound one repository's whole tags listing: the tags and
	// the page bytes upstream sends. A listing that reaches either stops there and is
	// served as it is, marked with X-Regcache-Truncated.
	TagsMaxCount int  `yaml:"tags_max_count"`
	TagsMaxBytes Size `yaml:"tags_max_bytes"`
	// Redis is the optional second tier that replicas share; nil without one.
	Redis *Redis `yaml:"redis"`
}

// Redis is a Redis or Valkey server shared by a fleet of replicas: tag entries and
// manifests that one replica fetched are there for the others.
type Redis struct {
	// Addr is host:port.
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	Password Secret `yaml:"password"`
	DB       int    `yaml:"db"`
	// TLS is "tls: true", or a mapping that adjusts how the server's certificate is checked.
	TLS *RedisTLS `yaml:"tls"`
	// KeyPrefix starts every key regcache writes, so that one server can hold other data or
	// several fleets. Default "regcache:".
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each Redis call (default 250ms). Past it, the call counts as a miss and
	// the replica asks upstream: a slow Redis must not be slower than no Redis.
	Timeout Duration `yaml:"timeout"`
}

// RedisTLS turns on TLS to Redis. A mapping turns it on unless it says enabled: false.
type RedisTLS struct {
	Enabled            *bool  `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// On reports whether TLS is wanted.
func (t *RedisTLS) On() bool { return t != nil && (t.Enabled == nil || *t.Enabled) }

// Upstream is one registry regcache may contact. Name and Aliases are the only ways a
// client can reach it; nothing else is ever dialled.
type Upstream struct {
	Name    string   `yaml:"name"`
	URL     string   `yaml:"url"`
	Aliases []string `yaml:"aliases"`
	// TagTTL overrides cache.tag_ttl for this upstream when set.
	TagTTL *Duration `yaml:"tag_ttl"`
	// StrictAccept answers like a registry (404) when the client's Accept leaves out the
	// manifest's type, instead of serving it anyway.
	StrictAccept   bool         `yaml:"strict_accept"`
	Credentials    *Credentials `yaml:"credentials"`
	Timeout        Duration     `yaml:"timeout"`
	ConnectTimeout Duration     `yaml:"connect_timeout"`
	TLS            TLS          `yaml:"tls"`
	// AllowedHosts are exact host names this upstream's redirects and token realm may name
	// although regcache cannot resolve them itself: behind an HTTP(S) proxy that alone
	// resolves outside names. Names that do resolve are checked as always.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// MaxConcurrent bounds the requests open to this upstream at once; misses beyond it
	// wait briefly, then get 503. 0 is the default (upstream.DefaultMaxConcurrent, 64).
	MaxConcurrent int `yaml:"max_concurrent"`
}

// Credentials authenticate regcache to an upstream, either at its token endpoint or as
// plain Basic auth.
type Credentials struct {
	Username string `yaml:"username"`
	Password Secret `yaml:"password"`
}

// TLS adjusts how an https upstream's certificate is checked.
type TLS struct {
	CAFile             string `yaml:"ca_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Secret holds a password behind a pointer. fmt never follows a pointer below the top
// level, and a bad verb (%d, or %s on a struct holding a *Credentials) bypasses String,
// GoString and Format altogether, so only a representation without the plaintext reachable
// by reflection at depth 0/1 is safe.
type Secret struct{ v *string }

// NewSecret wraps v.
func NewSecret(v string) Secret { return Secret{&v} }

// Reveal returns the value, for the one place that sends it upstream.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// String hides the value.
func (s Secret) String() string {
	if s.Reveal() == "" {
		return ""
	}
	return "REDACTED"
}

// GoString hides the value from %#v too.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// Format hides the value from every verb.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprint(f, s.String())
}

// Duration is a time.Duration written as Go writes durations ("60s", "24h").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as 512KiB, 256MiB, 1GiB or plain bytes.
type Size int64

// Defaults applied to keys a config file leaves out.
const (
	defaultTimeout        = 30 * time.Second
	defaultConnectTimeout = 5 * time.Second
	defaultTokenTTL       = 5 * time.Minute
	// Tags listing bounds (cache.Default* hold the same for zero fields).
	defaultTagsMaxPages = 20
	defaultTagsMaxCount = 100_000
	defaultTagsMaxBytes = 8 << 20
	// minSecretLength keeps a shared HMAC key out of guessing range (openssl rand -hex 16).
	minSecretLength = 32
	// minTokenLength keeps a static token out of guessing range even at the failure
	// limiter's pace (a client that guesses is also blocked after a few tries).
	minTokenLength = 16
)

// Load reads and validates the config at path; an empty path means the embedded default.
func Load(path string) (*Config, error) {
	if path == "" {
		return Parse(defaultYAML)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("config file %s does not exist", path)
		}
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes, expands ${VAR} references in, fills defaults of and validates a config.
func Parse(data []byte) (*Config, error) {
	cfg := &Config{
		Listen:          ":5000",
		DefaultUpstream: "docker.io",
		Cache: Cache{
			MaxSize:        256 << 20,
			TagTTL:         Duration(60 * time.Second),
			MaxStale:       Duration(24 * time.Hour),
			NegativeTTL:    Duration(10 * time.Second),
			RevalidateWait: Duration(2 * time.Second),
			MaxBlobSize:    1 << 20,

			TagsMaxPagesPerRequest: defaultTagsMaxPages,
			TagsMaxCount:           defaultTagsMaxCount,
			TagsMaxBytes:           defaultTagsMaxBytes,
		},
		Auth:   Auth{TokenTTL: Duration(defaultTokenTTL)},
		Server: defaultServer(),
	}
	if err := decode(data, cfg); err != nil {
		return nil, err
	}
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		if u.Timeout == 0 {
			u.Timeout = Duration(defaultTimeout)
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = Duration(defaultConnectTimeout)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// TagTTLFor is the tag freshness that applies to upstream u.
func (c *Config) TagTTLFor(u *Upstream) time.Duration {
	if u.TagTTL != nil {
		return u.TagTTL.D()
	}
	return c.Cache.TagTTL.D()
}

func (c *Config) validate() error {
	if c.Listen == "" {
		return fmt.Errorf("listen: must not be empty (e.g. \":5000\")")
	}
	if c.Cache.MaxSize <= 0 {
		return fmt.Errorf("cache.max_size: must be above zero (e.g. 256MiB)")
	}
	if c.Cache.MaxBlobSize <= 0 {
		return fmt.Errorf("cache.max_blob_size: must be above zero (e.g. 1MiB)")
	}
	if err := c.Cache.validateTags(); err != nil {
		return err
	}
	for key, d := range map[string]Duration{
		"cache.tag_ttl": c.Cache.TagTTL, "cache.max_stale": c.Cache.MaxStale,
		"cache.negative_ttl": c.Cache.NegativeTTL, "cache.revalidate_wait": c.Cache.RevalidateWait,
	} {
		if d < 0 {
			return fmt.Errorf("%s: must not be negative", key)
		}
	}
	if r := c.Cache.Redis; r != nil {
		if err := r.validate(); err != nil {
			return err
		}
	}
	if len(c.Upstreams) == 0 {
		return fmt.Errorf("upstreams: at least one upstream is needed")
	}
	seen := map[string]string{}
	claim := func(name, key string) error {
		n := strings.ToLower(name)
		if prev, dup := seen[n]; dup {
			return fmt.Errorf("%s: %q is already used by %s", key, name, prev)
		}
		seen[n] = key
		return nil
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		key := fmt.Sprintf("upstreams[%d]", i)
		if err := validName(u.Name); err != nil {
			return fmt.Errorf("%s.name: %v", key, err)
		}
		if err := claim(u.Name, key+".name"); err != nil {
			return err
		}
		for j, a := range u.Aliases {
			akey := fmt.Sprintf("%s.aliases[%d]", key, j)
			if err := validName(a); err != nil {
				return fmt.Errorf("%s: %v", akey, err)
			}
			if err := claim(a, akey); err != nil {
				return err
			}
		}
		if err := validURL(u.URL); err != nil {
			return fmt.Errorf("%s.url: %v", key, err)
		}
		if u.TagTTL != nil && *u.TagTTL < 0 {
			return fmt.Errorf("%s.tag_ttl: must not be negative", key)
		}
		if u.Timeout <= 0 {
			return fmt.Errorf("%s.timeout: must be above zero", key)
		}
		if u.ConnectTimeout <= 0 {
			return fmt.Errorf("%s.connect_timeout: must be above zero", key)
		}
		if cr := u.Credentials; cr != nil && (cr.Username == "") != (cr.Password.Reveal() == "") {
			return fmt.Errorf("%s.credentials: set both username and password, or neither", key)
		}
		if u.TLS.CAFile != "" {
			if _, err := os.Stat(u.TLS.CAFile); err != nil {
				return fmt.Errorf("%s.tls.ca_file: %v", key, err)
			}
		}
		if u.MaxConcurrent < 0 {
			return fmt.Errorf("%s.max_concurrent: must not be negative (0 is the default, 64)", key)
		}
		for j, h := range u.AllowedHosts {
			if err := validHostName(h); err != nil {
				return fmt.Errorf("%s.allowed_hosts[%d]: %v", key, j, err)
			}
		}
	}
	if c.Lookup(c.DefaultUpstream) == nil {
		return fmt.Errorf("default_upstream: %q is no upstream name or alias", c.DefaultUpstream)
	}
	if c.MetricsListen != "" {
		if err := validListen(c.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen: %v", err)
		}
		if err := c.CheckListeners(); err != nil {
			return err
		}
	}
	if c.PublicURL != "" {
		if err := validPublicURL(c.PublicURL); err != nil {
			return fmt.Errorf("public_url: %v", err)
		}
	}
	if err := c.Server.validate(); err != nil {
		return err
	}
	return c.Auth.validate()
}

// validateTags checks the tags listing bounds. Each has a floor (a listing must be able to
// make progress) and a ceiling (it is held in memory whole).
func (c *Cache) validateTags() error {
	if c.TagsMaxPagesPerRequest < 1 || c.TagsMaxPagesPerRequest > 1000 {
		return fmt.Errorf("cache.tags_max_pages_per_request: must be from 1 to 1000 (e.g. %d)", defaultTagsMaxPages)
	}
	if c.TagsMaxCount < 1 || c.TagsMaxCount > 10_000_000 {
		return fmt.Errorf("cache.tags_max_count: must be from 1 to 10000000 (e.g. %d)", defaultTagsMaxCount)
	}
	if c.TagsMaxBytes < 1<<10 || c.TagsMaxBytes > 1<<30 {
		return fmt.Errorf("cache.tags_max_bytes: must be between 1KiB and 1GiB (e.g. 8MiB); a listing is held in memory whole")
	}
	return nil
}

func (r *Redis) validate() error {
	if r.Addr == "" {
		return fmt.Errorf("cache.redis.addr: must be set (host:port, e.g. valkey:6379); remove cache.redis to run without a shared tier")
	}
	host, port, err := net.SplitHostPort(r.Addr)
	if err != nil || host == "" || port == "" || strings.ContainsAny(r.Addr, "/@") {
		return fmt.Errorf("cache.redis.addr: %q is not host:port (e.g. valkey:6379)", redactRaw(r.Addr))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("cache.redis.addr: %q: port must be a number from 1 to 65535", redactRaw(r.Addr))
	}
	if r.DB < 0 {
		return fmt.Errorf("cache.redis.db: must not be negative")
	}
	if r.Username != "" && r.Password.Reveal() == "" {
		return fmt.Errorf("cache.redis.username: set a password too (an ACL user needs one)")
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = "regcache:"
	}
	if r.Timeout < 0 {
		return fmt.Errorf("cache.redis.timeout: must not be negative (e.g. 250ms)")
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(250 * time.Millisecond)
	}
	if t := r.TLS; t != nil && t.CAFile != "" {
		if _, err := os.Stat(t.CAFile); err != nil {
			return fmt.Errorf("cache.redis.tls.ca_file: %v", err)
		}
	}
	return nil
}

func (a *Auth) validate() error {
	if a.Htpasswd != "" {
		if _, err := ReadHtpasswd(a.Htpasswd); err != nil {
			return fmt.Errorf("auth.htpasswd: %v", err)
		}
	}
	for i, t := range a.Tokens {
		if t.Reveal() == "" {
			return fmt.Errorf("auth.tokens[%d]: must not be empty", i)
		}
		if len(t.Reveal()) < minTokenLength {
			return fmt.Errorf("auth.tokens[%d]: must be at least %d characters (e.g. the output of openssl rand -hex 16)", i, minTokenLength)
		}
	}
	if s := a.Secret.Reveal(); s != "" && len(s) < minSecretLength {
		return fmt.Errorf("auth.secret: must be at least %d characters (e.g. the output of openssl rand -hex 32)", minSecretLength)
	}
	if a.TokenTTL <= 0 {
		return fmt.Errorf("auth.token_ttl: must be above zero (e.g. 5m)")
	}
	return nil
}

// Warnings are settings that load but are likely mistakes, for the log at start. They name
// keys, never values.
func (c *Config) Warnings() []string {
	var w []string
	secret := c.Auth.Secret.Reveal() != ""
	switch {
	case c.Auth.Enabled() && !secret:
		w = append(w, "auth.secret is not set: issued tokens are valid on this process only (set it when replicas share a name)")
	case !c.Auth.Enabled() && secret:
		// Replicas with auth on refuse anonymous tokens, but the key is better kept off
		// processes that sign for anyone.
		w = append(w, "auth.secret is set but auth is off: this process signs anonymous tokens with it for any client; "+
			"set it only where htpasswd or tokens are set too")
	}
	return w
}

// Lookup finds the upstream whose name or alias is name (case-insensitive, as host names
// are), or nil.
func (c *Config) Lookup(name string) *Upstream {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if strings.EqualFold(u.Name, name) {
			return u
		}
		for _, a := range u.Aliases {
			if strings.EqualFold(a, name) {
				return u
			}
		}
	}
	return nil
}

// validListen accepts a listen address: [host]:port.
func validListen(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \":9090\" or 127.0.0.1:9090)", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be a number from 0 to 65535", s)
	}
	return nil
}

// validName accepts what a client can write as the first path segment or ns= value:
// a host, host:port, or a short alias such as "hub".
func validName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':' || r == '_'
		if !ok {
			return fmt.Errorf("%q: use a host name, host:port or a plain word (letters, digits, . - _ :)", s)
		}
	}
	return nil
}

// validHostName accepts an exact DNS host name: no scheme, port, path or wildcard, and no
// IP address (an address is checked as an address, never waved through by name).
func validHostName(s string) error {
	const eg = "an exact host name such as auth.docker.io"
	name := strings.TrimSuffix(s, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q: give %s", s, eg)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		ok := l != "" && len(l) <= 63 && l[0] != '-' && l[len(l)-1] != '-'
		for _, r := range l {
			ok = ok && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
		}
		if !ok {
			return fmt.Errorf("%q: give %s (letters, digits and -, no scheme, port, path or *)", s, eg)
		}
	}
	if hostname.EndsInNumber(name) { // what the upstream address policy refuses as numeric
		return fmt.Errorf("%q: an IP address or number is no host name; give %s", s, eg)
	}
	return nil
}

func validURL(s string) error {
	shown := redactRaw(s)
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return fmt.Errorf("%q is not a URL (e.g. https://registry-1.docker.io)", shown)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: scheme must be http or https", shown)
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", shown)
	}
	if u.User != nil {
		return fmt.Errorf("%q: put credentials under credentials:, not in the URL", redactURL(u))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q: give the registry's base URL only, without path or query", s)
	}
	return nil
}

// validPublicURL accepts the base URL clients use for regcache: http or https, a host, no
// credentials, path, query or fragment (registry clients always ask /v2/ at the root).
func validPublicURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL (e.g. https://regcache.example.com)", redactRaw(s))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: scheme must be http or https", redactRaw(s))
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", redactRaw(s))
	}
	if u.User != nil {
		return fmt.Errorf("%q: must not carry credentials", redactURL(u))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%q: give scheme and host only, without path or query (clients ask /v2/ at the root)", s)
	}
	return nil
}

func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// redactRaw hides user-info in s textually, so it works on text url.Parse refuses and on
// opaque forms such as "user:pass@host".
func redactRaw(s string) string {
	prefix, rest := "", s
	if i := strings.Index(s, "://"); i >= 0 {
		prefix, rest = s[:i+3], s[i+3:]
	}
	authority := rest
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		authority = rest[:j]
	}
	if k := strings.LastIndex(authority, "@"); k >= 0 {
		return prefix + "REDACTED@" + rest[k+1:]
	}
	return s
}
