// Package configs holds regcache's configuration: the Config type, the embedded default
// (regcache.yaml) and the loader that validates a file once at start-up, with errors that
// name the key and say how to fix it.
package configs

import (
	_ "embed"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"regcache/cache"
	"regcache/internal/budget"
	"regcache/internal/feed"
	"regcache/internal/webhook"
	"regcache/proxy"
	"regcache/upstream"
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
	// Events is the change feed (GET /api/v1/events).
	Events Events `yaml:"events"`
	// Watch names tags kept revalidated when no client asks, so that their moves reach
	// the change feed.
	Watch []Watch `yaml:"watch"`
	// TLS, when set, serves listen over HTTPS; nil is plain HTTP.
	TLS *ListenTLS `yaml:"tls"`
}

// Events configures the change feed.
type Events struct {
	// LogSize is how many events are kept for subscribers that resume (Last-Event-ID).
	LogSize int `yaml:"log_size"`
	// Webhooks are HTTP receivers each event is posted to.
	Webhooks []Webhook `yaml:"webhooks"`
}

// Webhook is one receiver of change-feed events; internal/webhook delivers to it. It is the
// one place regcache contacts a host that is no upstream, and the operator names it.
type Webhook struct {
	// Name labels the hook in metrics and logs; default: the URL's host and path.
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// Format is regcache, cloudevents, dockerhub or template (placeholders in URL).
	Format string `yaml:"format"`
	// Secret signs each delivery (X-Regcache-Signature).
	Secret Secret `yaml:"secret"`
	// Headers are sent with every delivery (Authorization: Bearer ${TOKEN}).
	Headers map[string]Secret `yaml:"headers"`
	Filter  EventFilter       `yaml:"filter"`
	// Timeout bounds one attempt; MaxRetries counts the attempts after the first (0: none).
	Timeout    Duration `yaml:"timeout"`
	MaxRetries int      `yaml:"max_retries"`
	// QueueSize bounds the events waiting for this receiver; beyond, they are dropped.
	QueueSize int `yaml:"queue_size"`
}

// setDefaults gives a hook's keys their owner's defaults before the file's are read, so
// that a key written 0 (max_retries: 0) stays 0.
func (w *Webhook) setDefaults() {
	w.Format = webhook.DefaultFormat
	w.Timeout = Duration(webhook.DefaultTimeout)
	w.MaxRetries = webhook.DefaultMaxRetries
	w.QueueSize = webhook.DefaultQueueSize
}

// EventFilter picks the events a webhook gets; each list empty means all.
type EventFilter struct {
	// Images are registry/repository[:tag] (without a tag, every tag of the repository).
	Images     []string `yaml:"images"`
	Registries []string `yaml:"registries"`
	Types      []string `yaml:"types"`
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

// Enabled reports whether clients must authenticate.
func (a *Auth) Enabled() bool { return a.Htpasswd != "" || len(a.Tokens) > 0 }

// Cache configures the in-process cache and its freshness rules.
type Cache struct {
	MaxSize Size     `yaml:"max_size"`
	TagTTL  Duration `yaml:"tag_ttl"`
	// TagTTLRules give matching tags a TTL of their own (after any upstream's rules).
	TagTTLRules    []TTLRule `yaml:"tag_ttl_rules"`
	MaxStale       Duration  `yaml:"max_stale"`
	NegativeTTL    Duration  `yaml:"negative_ttl"`
	RevalidateWait Duration  `yaml:"revalidate_wait"`
	// ErrorBackoff is how long a stale tag is served without asking upstream again after a
	// failed revalidation, doubling per failure in a row up to the tag's TTL; it is also
	// where each upstream's breaker starts.
	ErrorBackoff Duration `yaml:"error_backoff"`
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
	// Snapshot keeps what memory holds across restarts; nil without one.
	Snapshot *Snapshot `yaml:"snapshot"`
}

// Snapshot is cache.snapshot: the tag entries, manifests and small blobs in memory are
// written to Path every Interval and at shutdown, and loaded (verified) at start.
type Snapshot struct {
	Path     string   `yaml:"path"`
	Interval Duration `yaml:"interval"`
}

// setDefaults gives the snapshot its interval's default before the file's keys are read,
// so that interval: 0 is refused rather than taken for the default.
func (s *Snapshot) setDefaults() { s.Interval = Duration(cache.DefaultSnapshotInterval) }

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
	// several fleets. Default cache.DefaultRedisKeyPrefix.
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each Redis call (default cache.DefaultRedisTimeout). Past it, the call
	// counts as a miss and the replica asks upstream: a slow Redis must not be slower than
	// no Redis.
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
	// TagTTLRules are tried before cache.tag_ttl_rules, for this upstream's tags.
	TagTTLRules []TTLRule `yaml:"tag_ttl_rules"`
	// StrictAccept answers like a registry (404) when the client's Accept leaves out the
	// manifest's type, instead of serving it anyway.
	StrictAccept bool         `yaml:"strict_accept"`
	Credentials  *Credentials `yaml:"credentials"`
	// Timeout and ConnectTimeout bound an upstream operation and a connect; left out or 0,
	// they are upstream.DefaultTimeout and upstream.DefaultConnectTimeout.
	Timeout        Duration `yaml:"timeout"`
	ConnectTimeout Duration `yaml:"connect_timeout"`
	TLS            TLS      `yaml:"tls"`
	// AllowedHosts are exact host names this upstream's redirects and token realm may name
	// although regcache cannot resolve them itself: behind an HTTP(S) proxy that alone
	// resolves outside names. Names that do resolve are checked as always.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// MaxConcurrent bounds the requests open to this upstream at once; misses beyond it
	// wait briefly, then get 503. 0 is upstream.DefaultMaxConcurrent.
	MaxConcurrent int `yaml:"max_concurrent"`
	// FailuresToOpen is how many operations failing in a row open this upstream's breaker:
	// then requests are answered without asking it, one probe per backoff. Left out or 0, it
	// is upstream.DefaultFailuresToOpen.
	FailuresToOpen int `yaml:"failures_to_open"`
	// Budget bounds the background work regcache does for this upstream (refresh-ahead,
	// watches and their tag listings) in any window of its length; clients' requests never
	// take it. BudgetShare is the part of the limit the upstream announces
	// (RateLimit-Limit with a window) that background manifest GETs may take.
	Budget      Budget  `yaml:"budget"`
	BudgetShare Percent `yaml:"budget_share"`
}

// setDefaults gives an upstream's keys whose 0 is a setting of its own their owners'
// defaults before the file's are read (budget_share: 0% is no background GET at all).
func (u *Upstream) setDefaults() {
	u.BudgetShare = Percent(budget.DefaultShare)
}

// Budget is upstreams[].budget: auto (the zero value, written "auto": budget.DefaultRequests
// per budget.DefaultPer), or at most Requests background requests in any window of Per.
type Budget struct {
	Requests int      `yaml:"requests"`
	Per      Duration `yaml:"per"`
}

// Auto reports budget: auto.
func (b Budget) Auto() bool { return b == Budget{} }

// Percent is a share of 0 to 100, written 50% (or 50).
type Percent int

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

// Duration is a time.Duration written as Go writes durations ("60s", "24h").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as 512KiB, 256MiB, 1GiB or plain bytes.
type Size int64

// The defaults configs owns itself, since no package has one: where regcache listens, and
// which upstream a path without one names. Every other default is its package's (defaults).
const (
	defaultListen   = ":5000"
	defaultUpstream = "docker.io"
)

const (
	// minSecretLength keeps a shared HMAC key out of guessing range (openssl rand -hex 16).
	minSecretLength = 32
	// minTokenLength keeps a static token out of guessing range even at the failure
	// limiter's pace (a client that guesses is also blocked after a few tries).
	minTokenLength = 16
)

// Load reads and validates the config at path; an empty path means the embedded default.
func Load(path string) (*Config, error) { return load(path, nil) }

// lookupIgnores are the sections a one-shot lookup (regcache digest without a server) has
// no use for: what serves clients (listeners, TLS, client auth, the server's limits),
// what runs in the background (watches, the change feed's webhooks) and what is shared or
// kept (the Redis tier, the snapshot). They are dropped before validation, so that a
// server's config whose secrets live only in the server's environment works on a
// workstation.
var lookupIgnores = [][]string{
	{"listen"}, {"metrics_listen"}, {"public_url"}, {"trust_forwarded_headers"}, {"tls"},
	{"auth"}, {"server"}, {"watch"}, {"events"}, {"cache", "redis"}, {"cache", "snapshot"},
}

// LoadForLookup is Load for a one-shot lookup: the upstreams and the cache's rules, with
// the sections in lookupIgnores left at their defaults whatever the file says.
func LoadForLookup(path string) (*Config, error) { return load(path, lookupIgnores) }

func load(path string, ignore [][]string) (*Config, error) {
	if path == "" {
		return parse(defaultYAML, ignore)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("config file %s does not exist", path)
		}
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := parse(data, ignore)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes, expands ${VAR} references in, fills defaults of and validates a config.
func Parse(data []byte) (*Config, error) { return parse(data, nil) }

// parse is Parse with the key paths in ignore dropped from the document before it is read.
func parse(data []byte, ignore [][]string) (*Config, error) {
	cfg := defaults()
	if err := decode(data, cfg, ignore...); err != nil {
		return nil, err
	}
	cfg.fillZeros()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// defaults is the config of an empty file: each key at the default of the package that
// applies it, read from that package's exported constant (the one place the value is
// written). The config carries the value rather than 0 because for most keys 0 is a setting
// of its own: refused (no timeout, no room) or meaning none (a TTL). server.concurrency and
// upstreams[].max_concurrent stay 0, which their owners read as their default; the keys
// inside upstreams[] and cache.redis get theirs from fillZeros once decoded, those inside
// events.webhooks[] from setDefaults as each is decoded.
func defaults() *Config {
	return &Config{
		Listen:          defaultListen,
		DefaultUpstream: defaultUpstream,
		Cache: Cache{
			MaxSize:        cache.DefaultMaxSize,
			TagTTL:         Duration(cache.DefaultTagTTL),
			MaxStale:       Duration(cache.DefaultMaxStale),
			NegativeTTL:    Duration(cache.DefaultNegativeTTL),
			RevalidateWait: Duration(cache.DefaultRevalidateWait),
			ErrorBackoff:   Duration(cache.DefaultErrorBackoff),
			MaxBlobSize:    cache.DefaultMaxBlobSize,

			TagsMaxPagesPerRequest: cache.DefaultTagsMaxPages,
			TagsMaxCount:           cache.DefaultTagsMaxCount,
			TagsMaxBytes:           cache.DefaultTagsMaxBytes,
		},
		Auth:   Auth{TokenTTL: Duration(proxy.DefaultTokenTTL)},
		Events: Events{LogSize: feed.DefaultLogSize},
		Server: Server{
			ReadTimeout:    Duration(proxy.DefaultReadTimeout),
			WriteTimeout:   Duration(proxy.DefaultWriteTimeout),
			IdleTimeout:    Duration(proxy.DefaultIdleTimeout),
			MaxHeaderSize:  proxy.DefaultMaxHeaderSize,
			MaxRequestBody: proxy.DefaultMaxRequestBody,
		},
	}
}

// fillZeros gives the keys inside upstreams[] and cache.redis their owners' defaults where
// the file leaves them out or writes 0 (or "" for key_prefix), and a webhook without a
// name its URL's. (The other keys of events.webhooks[] get theirs as each is decoded.)
func (c *Config) fillZeros() {
	for i := range c.Events.Webhooks {
		if w := &c.Events.Webhooks[i]; w.Name == "" {
			w.Name = webhook.DefaultName(w.URL)
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Timeout == 0 {
			u.Timeout = Duration(upstream.DefaultTimeout)
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = Duration(upstream.DefaultConnectTimeout)
		}
		if u.FailuresToOpen == 0 {
			u.FailuresToOpen = upstream.DefaultFailuresToOpen
		}
	}
	if r := c.Cache.Redis; r != nil {
		if r.KeyPrefix == "" {
			r.KeyPrefix = cache.DefaultRedisKeyPrefix
		}
		if r.Timeout == 0 {
			r.Timeout = Duration(cache.DefaultRedisTimeout)
		}
	}
}

// TTLRule gives the tags Match matches (a Go regular expression, unanchored unless
// written ^...$) their own TTL.
type TTLRule struct {
	Match string   `yaml:"match"`
	TTL   Duration `yaml:"ttl"`
}

// TTLRulesFor are the rules for u's tags, in the order tried: u's own, then the cache's.
// The patterns were checked by validation.
func (c *Config) TTLRulesFor(u *Upstream) []cache.TTLRule {
	var out []cache.TTLRule
	for _, r := range append(append([]TTLRule(nil), u.TagTTLRules...), c.Cache.TagTTLRules...) {
		out = append(out, cache.TTLRule{Match: regexp.MustCompile(r.Match), TTL: r.TTL.D()})
	}
	return out
}

// TagTTLFor is the tag freshness that applies to upstream u.
func (c *Config) TagTTLFor(u *Upstream) time.Duration {
	if u.TagTTL != nil {
		return u.TagTTL.D()
	}
	return c.Cache.TagTTL.D()
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
	return append(w, c.tlsWarnings()...)
}

// IsDockerHub reports whether u is Docker Hub (named or aliased docker.io), whose
// one-segment names live under library/. A nil u is none.
func (u *Upstream) IsDockerHub() bool {
	if u == nil {
		return false
	}
	for _, n := range append([]string{u.Name}, u.Aliases...) {
		if strings.EqualFold(n, "docker.io") {
			return true
		}
	}
	return false
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
