package configs

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	yaml "go.yaml.in/yaml/v3"

	"regcache/cache"
	"regcache/internal/budget"
	"regcache/internal/feed"
	"regcache/internal/webhook"
	"regcache/proxy"
	"regcache/upstream"
)

// ownedDefaults are the keys whose default a package owns, with the owner's value typed as
// the config types it. Parse must give it for a key left out, and wherever the embedded
// default or docs/configuration.md show the key, they must show that value, so that
// neither drifts when the owner changes.
var ownedDefaults = []struct {
	key  string
	want any
	// zero: Parse leaves the key 0 and the owner reads 0 as want.
	zero bool
	// embedded: configs/regcache.yaml shows the key (set, or commented out).
	embedded bool
}{
	{"listen", defaultListen, false, true},
	{"default_upstream", defaultUpstream, false, true},
	{"cache.max_size", Size(cache.DefaultMaxSize), false, true},
	{"events.log_size", feed.DefaultLogSize, false, true},
	{"cache.max_blob_size", Size(cache.DefaultMaxBlobSize), false, true},
	{"cache.tag_ttl", Duration(cache.DefaultTagTTL), false, true},
	{"cache.max_stale", Duration(cache.DefaultMaxStale), false, true},
	{"cache.negative_ttl", Duration(cache.DefaultNegativeTTL), false, true},
	{"cache.revalidate_wait", Duration(cache.DefaultRevalidateWait), false, true},
	{"cache.error_backoff", Duration(cache.DefaultErrorBackoff), false, true},
	{"cache.tags_max_pages_per_request", cache.DefaultTagsMaxPages, false, true},
	{"cache.tags_max_count", cache.DefaultTagsMaxCount, false, true},
	{"cache.tags_max_bytes", Size(cache.DefaultTagsMaxBytes), false, true},
	{"cache.redis.key_prefix", cache.DefaultRedisKeyPrefix, false, false},
	{"cache.redis.timeout", Duration(cache.DefaultRedisTimeout), false, false},
	{"cache.snapshot.interval", Duration(cache.DefaultSnapshotInterval), false, true},
	{"auth.token_ttl", Duration(proxy.DefaultTokenTTL), false, true},
	{"server.read_timeout", Duration(proxy.DefaultReadTimeout), false, true},
	{"server.write_timeout", Duration(proxy.DefaultWriteTimeout), false, true},
	{"server.idle_timeout", Duration(proxy.DefaultIdleTimeout), false, true},
	{"server.max_header_size", Size(proxy.DefaultMaxHeaderSize), false, true},
	{"server.max_request_body", Size(proxy.DefaultMaxRequestBody), false, true},
	{"upstreams[0].timeout", Duration(upstream.DefaultTimeout), false, false},
	{"upstreams[0].connect_timeout", Duration(upstream.DefaultConnectTimeout), false, false},
	{"upstreams[0].max_concurrent", upstream.DefaultMaxConcurrent, true, true},
	{"upstreams[0].failures_to_open", upstream.DefaultFailuresToOpen, false, true},
	{"upstreams[0].budget", Budget{}, false, true}, // auto: budget.DefaultRequests per budget.DefaultPer
	{"upstreams[0].budget_share", Percent(budget.DefaultShare), false, true},
	{"events.webhooks[0].format", webhook.DefaultFormat, false, false},
	{"events.webhooks[0].timeout", Duration(webhook.DefaultTimeout), false, false},
	{"events.webhooks[0].max_retries", webhook.DefaultMaxRetries, false, false},
	{"events.webhooks[0].queue_size", webhook.DefaultQueueSize, false, false},
}

func TestParseGivesOwnersDefaults(t *testing.T) {
	cfg := mustParse(t, minimalUpstream+"cache:\n  snapshot:\n    path: /data/snapshot\n  redis:\n    addr: valkey:6379\nevents:\n  webhooks:\n    - url: http://hooks.example/x\n")
	for _, d := range ownedDefaults {
		got := configAt(t, reflect.ValueOf(cfg).Elem(), d.key).Interface()
		want := d.want
		if d.zero {
			want = reflect.Zero(reflect.TypeOf(d.want)).Interface()
		}
		if got != want {
			t.Errorf("%s left out: Parse gives %s, want %s (its owner's default)", d.key, show(got), show(want))
		}
	}
}

func TestEmbeddedDefaultShowsOwnersDefaults(t *testing.T) {
	// The commented-out keys document defaults too: read them as if set.
	text := regexp.MustCompile(`(?m)^(\s*)# ?(\s*[a-z_]+:(?:\s.*)?)$`).ReplaceAllString(string(Default()), "$1$2")
	checkShown(t, "configs/regcache.yaml", text, func(embedded bool) bool { return embedded })
}

func TestConfigurationDocShowsOwnersDefaults(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "```yaml\n")
	block, _, ok2 := strings.Cut(block, "\n```")
	if !ok || !ok2 {
		t.Fatal("docs/configuration.md: no ```yaml block")
	}
	checkShown(t, "docs/configuration.md", block, func(bool) bool { return true })
}

// checkShown checks that the YAML text shows every owned default it holds with the owner's
// value, and holds those that must reports true for. The concurrency key shows 0, which
// means fasthttp's default; its comment names that value.
func checkShown(t *testing.T, name, text string, must func(embedded bool) bool) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil || len(doc.Content) == 0 {
		t.Fatalf("%s: not YAML: %v", name, err)
	}
	typ := reflect.TypeOf(Config{})
	for _, d := range ownedDefaults {
		n := yamlAt(doc.Content[0], d.key)
		if n == nil {
			if must(d.embedded) {
				t.Errorf("%s does not show %s", name, d.key)
			}
			continue
		}
		v := reflect.New(reflect.TypeOf(d.want)).Elem()
		if err := decodeNode(n, v, d.key); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if v.Interface() != d.want {
			t.Errorf("%s shows %s: %s; its owner's default is %s", name, d.key, n.Value, show(d.want))
		}
		if f := configAt(t, reflect.New(typ).Elem(), d.key); f.Type() != v.Type() {
			t.Fatalf("ownedDefaults: %s is a %s in Config, not a %s", d.key, f.Type(), v.Type())
		}
	}
	var concurrency string
	for line := range strings.Lines(text) {
		if strings.HasPrefix(strings.TrimSpace(line), "concurrency:") {
			concurrency = line
		}
	}
	if !strings.Contains(concurrency, strconv.Itoa(fasthttp.DefaultConcurrency)) {
		t.Errorf("%s: server.concurrency's comment does not name fasthttp's default, %d: %q", name, fasthttp.DefaultConcurrency, concurrency)
	}
}

// show writes a config value as a config file would.
func show(v any) string {
	switch v := v.(type) {
	case Duration:
		return durationText(v.D())
	case Size:
		return sizeText(int64(v))
	case Budget:
		if v.Auto() {
			return "auto"
		}
	case Percent:
		return fmt.Sprintf("%d%%", v)
	}
	return fmt.Sprint(v)
}

func TestDurationAndSizeText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		30 * time.Second: "30s", 30 * time.Minute: "30m", 120 * time.Second: "2m", 24 * time.Hour: "24h",
		90 * time.Minute: "1h30m", 250 * time.Millisecond: "250ms", 0: "0s",
	} {
		if got := durationText(d); got != want {
			t.Errorf("durationText(%v) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{1 << 20: "1MiB", 16 << 10: "16KiB", 1 << 30: "1GiB", 1536: "1536", 3 << 19: "1536KiB", 0: "0"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
		if back, err := ParseSize(sizeText(n)); err != nil || int64(back) != n {
			t.Errorf("ParseSize(sizeText(%d)) = %d, %v", n, back, err)
		}
	}
}

// yamlAt is the node at key (a.b, a[0].b) below the mapping n, or nil.
func yamlAt(n *yaml.Node, key string) *yaml.Node {
	for _, seg := range strings.Split(key, ".") {
		name, index := splitIndex(seg)
		var next *yaml.Node
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		if index >= 0 {
			if next.Kind != yaml.SequenceNode || index >= len(next.Content) {
				return nil
			}
			next = next.Content[index]
		}
		n = next
	}
	return n
}

// configAt is the field of v (a Config) that key names, by the fields' yaml tags.
func configAt(t *testing.T, v reflect.Value, key string) reflect.Value {
	t.Helper()
	for _, seg := range strings.Split(key, ".") {
		name, index := splitIndex(seg)
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		f := -1
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).Tag.Get("yaml") == name {
				f = i
			}
		}
		if f < 0 {
			t.Fatalf("ownedDefaults: Config has no key %s", key)
		}
		v = v.Field(f)
		if index >= 0 {
			if v.Len() <= index {
				v.Set(reflect.MakeSlice(v.Type(), index+1, index+1))
			}
			v = v.Index(index)
		}
	}
	return v
}

// splitIndex splits "upstreams[0]" into "upstreams" and 0; -1 when seg has no index.
func splitIndex(seg string) (string, int) {
	name, rest, ok := strings.Cut(seg, "[")
	if !ok {
		return seg, -1
	}
	i, err := strconv.Atoi(strings.TrimSuffix(rest, "]"))
	if err != nil {
		return seg, -1
	}
	return name, i
}
