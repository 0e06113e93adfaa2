package configs

import (
	"strings"
	"testing"
	"time"
)

func TestTTLRules(t *testing.T) {
	cfg := mustParse(t, `default_upstream: ghcr.io
cache:
  tag_ttl: 30s
  tag_ttl_rules:
    - match: '^\d+\.\d+\.\d+$'
      ttl: 6h
upstreams:
  - name: ghcr.io
    url: https://ghcr.io
    tag_ttl: 2m
    tag_ttl_rules:
      - match: '^(edge|nightly)$'
        ttl: 10s
`)
	u := cfg.Lookup("ghcr.io")
	rules := cfg.TTLRulesFor(u)
	if len(rules) != 2 || rules[0].TTL != 10*time.Second || rules[1].TTL != 6*time.Hour {
		t.Fatalf("rules %+v; want the upstream's, then the cache's", rules)
	}
	for tag, want := range map[string]bool{"edge": true, "nightly": true, "edge2": false} {
		if got := rules[0].Match.MatchString(tag); got != want {
			t.Errorf("%q matches the upstream rule: %v", tag, got)
		}
	}
}

func TestTTLRuleRefusals(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"cache:\n  tag_ttl_rules:\n    - ttl: 1h\n" + minimalUpstream, "cache.tag_ttl_rules[0].match: must be set"},
		{"cache:\n  tag_ttl_rules:\n    - match: '(['\n      ttl: 1h\n" + minimalUpstream, `cache.tag_ttl_rules[0].match: "([" is not a regular expression`},
		{"cache:\n  tag_ttl_rules:\n    - match: a\n      ttl: -1s\n" + minimalUpstream, "cache.tag_ttl_rules[0].ttl: must not be negative"},
		{"cache:\n  tag_ttl_rules:\n    - match: a\n      ttl: soon\n" + minimalUpstream, "cache.tag_ttl_rules[0].ttl"},
		{minimalUpstream + "    tag_ttl_rules:\n      - match: a\n        ttl: 1h\n        tll: 2h\n", "upstreams[0].tag_ttl_rules[0].tll: unknown key"},
		{minimalUpstream + "    tag_ttl_rules:\n      - match: '*'\n        ttl: 1h\n", `upstreams[0].tag_ttl_rules[0].match: "*" is not a regular expression`},
	} {
		_, err := Parse([]byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v; want one saying %q", err, tc.want)
		}
	}
}
