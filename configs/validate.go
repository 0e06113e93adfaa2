package configs

// Validation: every check a config passes once at start-up, with errors that name the key
// and say how to fix it, and never echo a credential.

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"regcache/cache"
	"regcache/internal/feed"
	"regcache/internal/hostname"
	"regcache/internal/webhook"
	"regcache/proxy"
	"regcache/upstream"
)

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

func (c *Config) validate() error {
	if c.Listen == "" {
		return fmt.Errorf("listen: must not be empty (e.g. %q)", defaultListen)
	}
	if c.Cache.MaxSize <= 0 {
		return fmt.Errorf("cache.max_size: must be above zero (e.g. %s)", sizeText(cache.DefaultMaxSize))
	}
	if err := validRules("cache.tag_ttl_rules", c.Cache.TagTTLRules); err != nil {
		return err
	}
	if c.Cache.MaxBlobSize <= 0 {
		return fmt.Errorf("cache.max_blob_size: must be above zero (e.g. %s)", sizeText(cache.DefaultMaxBlobSize))
	}
	if err := c.Cache.validateTags(); err != nil {
		return err
	}
	for key, d := range map[string]Duration{
		"cache.tag_ttl": c.Cache.TagTTL, "cache.max_stale": c.Cache.MaxStale,
		"cache.negative_ttl": c.Cache.NegativeTTL, "cache.revalidate_wait": c.Cache.RevalidateWait,
		"cache.error_backoff": c.Cache.ErrorBackoff,
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
	if s := c.Cache.Snapshot; s != nil {
		if err := s.validate(); err != nil {
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
		if err := validRules(key+".tag_ttl_rules", u.TagTTLRules); err != nil {
			return err
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
		if u.FailuresToOpen < 0 {
			return fmt.Errorf("%s.failures_to_open: must not be negative (0 is the default, %d)", key, upstream.DefaultFailuresToOpen)
		}
		if u.MaxConcurrent < 0 {
			return fmt.Errorf("%s.max_concurrent: must not be negative (0 is the default, %d)", key, upstream.DefaultMaxConcurrent)
		}
		if err := u.Budget.validate(key + ".budget"); err != nil {
			return err
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
	if c.TLS != nil {
		if err := c.TLS.validate(); err != nil {
			return err
		}
	}
	if err := c.validateWatch(); err != nil {
		return err
	}
	if c.Events.LogSize < 1 || c.Events.LogSize > 1_000_000 {
		return fmt.Errorf("events.log_size: must be from 1 to 1000000 (e.g. %d)", feed.DefaultLogSize)
	}
	if err := c.validateWebhooks(); err != nil {
		return err
	}
	return c.Auth.validate()
}

// maxWebhookRetries bounds max_retries: at the 60 s ceiling of the backoff, 100 retries
// hold a receiver's queue well over an hour already.
const maxWebhookRetries = 100

// validateWebhooks checks events.webhooks. Errors name the hook by index, and never show
// a secret, a header value, or the URL (its path or query may hold a token).
func (c *Config) validateWebhooks() error {
	names := map[string]string{}
	for i := range c.Events.Webhooks {
		w := &c.Events.Webhooks[i]
		key := fmt.Sprintf("events.webhooks[%d]", i)
		if !slices.Contains(webhook.Formats, w.Format) {
			return fmt.Errorf("%s.format: unknown format %q (%s)", key, w.Format, strings.Join(webhook.Formats, ", "))
		}
		if err := webhook.CheckURL(w.Format, w.URL); err != nil {
			return fmt.Errorf("%s.url: %v", key, err)
		}
		if strings.TrimSpace(w.Name) == "" || strings.ContainsFunc(w.Name, unicode.IsControl) {
			return fmt.Errorf("%s.name: must be a label without control characters (metrics and logs show it)", key)
		}
		if prev, dup := names[w.Name]; dup {
			return fmt.Errorf("%s.name: %q is already used by %s (set name: to tell them apart)", key, w.Name, prev)
		}
		names[w.Name] = key
		if w.Timeout <= 0 {
			return fmt.Errorf("%s.timeout: must be above zero (e.g. %s)", key, durationText(webhook.DefaultTimeout))
		}
		if w.MaxRetries < 0 || w.MaxRetries > maxWebhookRetries {
			return fmt.Errorf("%s.max_retries: must be from 0 to %d (e.g. %d)", key, maxWebhookRetries, webhook.DefaultMaxRetries)
		}
		if w.QueueSize < 1 || w.QueueSize > webhook.MaxQueueSize {
			return fmt.Errorf("%s.queue_size: must be from 1 to %d (e.g. %d)", key, webhook.MaxQueueSize, webhook.DefaultQueueSize)
		}
		if err := validHeaders(w.Headers); err != nil {
			return fmt.Errorf("%s.headers.%v", key, err)
		}
		if err := c.validEventFilter(&w.Filter); err != nil {
			return fmt.Errorf("%s.filter.%v", key, err)
		}
	}
	return nil
}

// reservedHeaders are set by regcache or by the HTTP connection itself (HTTP/2 refuses
// the hop-by-hop ones): a hook's headers may not name them.
var reservedHeaders = []string{"Host", "Content-Type", "Content-Length", "Transfer-Encoding", "Connection",
	"Upgrade", "Te", "Trailer", "Keep-Alive", "Proxy-Connection", "User-Agent"}

// validHeaders accepts header names that are HTTP tokens and none regcache sets itself, and
// values without line breaks. Errors start with the header's name.
func validHeaders(h map[string]Secret) error {
	seen := map[string]string{}
	for name, v := range h {
		canon := http.CanonicalHeaderKey(name)
		if !validToken(name) {
			return fmt.Errorf("%s: not a header name (letters, digits and !#$%%&'*+-.^_`|~)", name)
		}
		if prev, dup := seen[canon]; dup {
			return fmt.Errorf("%s: the same header as %s (names ignore case); keep one", name, prev)
		}
		seen[canon] = name
		if slices.Contains(reservedHeaders, canon) || strings.HasPrefix(canon, "X-Regcache-") {
			return fmt.Errorf("%s: regcache (or HTTP itself) sets this header", name)
		}
		if v.Reveal() == "" {
			return fmt.Errorf("%s: must not be empty", name)
		}
		if strings.ContainsFunc(v.Reveal(), func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			return fmt.Errorf("%s: the value must be one line, without control characters", name)
		}
	}
	return nil
}

// validToken reports whether s is an HTTP token (RFC 9110), what a header name must be.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)
		if !ok {
			return false
		}
	}
	return true
}

// validEventFilter checks a webhook's filter: known event types, and registries (also the
// registry part of images) that are upstream names, as events carry them: an alias or a
// typo would match nothing, silently. Errors start with the filter's key.
func (c *Config) validEventFilter(f *EventFilter) error {
	types := []string{feed.TagChanged, feed.TagCreated, feed.TagDeleted}
	for i, t := range f.Types {
		if !slices.Contains(types, t) {
			return fmt.Errorf("types[%d]: unknown type %q (%s)", i, t, strings.Join(types, ", "))
		}
	}
	registry := func(name string) error {
		u := c.Lookup(name)
		switch {
		case u == nil:
			return fmt.Errorf("%q is no upstream name", name)
		case u.Name != name:
			return fmt.Errorf("%q: events name the upstream %q, not an alias of it", name, u.Name)
		}
		return nil
	}
	for i, r := range f.Registries {
		if err := registry(r); err != nil {
			return fmt.Errorf("registries[%d]: %v", i, err)
		}
	}
	for i, img := range f.Images {
		reg, repo, ok := strings.Cut(img, "/")
		if !ok || repo == "" || strings.HasPrefix(repo, "/") {
			return fmt.Errorf("images[%d]: %q is not registry/repository[:tag] (e.g. docker.io/library/nginx:latest)", i, img)
		}
		if err := registry(reg); err != nil {
			return fmt.Errorf("images[%d]: %v", i, err)
		}
		if strings.Contains(repo, "@") {
			return fmt.Errorf("images[%d]: %q names a digest; events name tags (registry/repository[:tag])", i, img)
		}
		if name, _, _ := strings.Cut(repo, ":"); c.Lookup(reg).IsDockerHub() && !strings.Contains(name, "/") {
			return fmt.Errorf("images[%d]: %q: events name Docker Hub's official images under library/ (%s/library/%s)", i, img, reg, repo)
		}
	}
	return nil
}

// maxTTLRules bounds a rule list: a miss tries each in turn.
const maxTTLRules = 100

// validRules checks a tag_ttl_rules list: patterns that compile, TTLs not negative.
func validRules(key string, rules []TTLRule) error {
	if len(rules) > maxTTLRules {
		return fmt.Errorf("%s: at most %d rules", key, maxTTLRules)
	}
	for i, r := range rules {
		if r.Match == "" {
			return fmt.Errorf("%s[%d].match: must be set: a regular expression of tags (e.g. %q)", key, i, `^v?\d+\.\d+\.\d+$`)
		}
		if _, err := regexp.Compile(r.Match); err != nil {
			return fmt.Errorf("%s[%d].match: %q is not a regular expression: %v", key, i, r.Match, err)
		}
		if r.TTL < 0 {
			return fmt.Errorf("%s[%d].ttl: must not be negative", key, i)
		}
	}
	return nil
}

// validateTags checks the tags listing bounds. Each has a floor (a listing must be able to
// make progress) and a ceiling (it is held in memory whole).
func (c *Cache) validateTags() error {
	if c.TagsMaxPagesPerRequest < 1 || c.TagsMaxPagesPerRequest > 1000 {
		return fmt.Errorf("cache.tags_max_pages_per_request: must be from 1 to 1000 (e.g. %d)", cache.DefaultTagsMaxPages)
	}
	if c.TagsMaxCount < 1 || c.TagsMaxCount > 10_000_000 {
		return fmt.Errorf("cache.tags_max_count: must be from 1 to 10000000 (e.g. %d)", cache.DefaultTagsMaxCount)
	}
	if c.TagsMaxBytes < 1<<10 || c.TagsMaxBytes > 1<<30 {
		return fmt.Errorf("cache.tags_max_bytes: must be between 1KiB and 1GiB (e.g. %s); a listing is held in memory whole", sizeText(cache.DefaultTagsMaxBytes))
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
	if r.Timeout < 0 {
		return fmt.Errorf("cache.redis.timeout: must not be negative (e.g. %s)", durationText(cache.DefaultRedisTimeout))
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
		return fmt.Errorf("auth.token_ttl: must be above zero (e.g. %s)", durationText(proxy.DefaultTokenTTL))
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

// durationText writes d as a config file would: 30s, 30m, 24h, 250ms (time.Duration's
// String writes 30m0s).
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// sizeText writes n as a config file would: in the largest unit that divides it whole.
func sizeText(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Bounds of upstreams[].budget: a log holds up to requests entries (bytes each), and a
// window longer than a day is no budget an upstream announces.
const (
	maxBudgetRequests = 1_000_000
	maxBudgetPer      = 24 * time.Hour
)

func (b Budget) validate(key string) error {
	if b.Auto() {
		return nil
	}
	if b.Requests < 1 || b.Requests > maxBudgetRequests {
		return fmt.Errorf("%s.requests: must be 1 to %d background requests per window (or write budget: auto)", key, maxBudgetRequests)
	}
	if b.Per <= 0 || b.Per.D() > maxBudgetPer {
		return fmt.Errorf("%s.per: must be a window above zero and at most 24h (e.g. 1m)", key)
	}
	return nil
}

func (s *Snapshot) validate() error {
	if s.Path == "" {
		return fmt.Errorf("cache.snapshot.path: must be set (e.g. /var/lib/regcache/regcache.snapshot); remove cache.snapshot to start cold")
	}
	if s.Interval <= 0 {
		return fmt.Errorf("cache.snapshot.interval: must be more than 0 (e.g. %s)", durationText(cache.DefaultSnapshotInterval))
	}
	return nil
}
