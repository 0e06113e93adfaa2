package configs

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRedisConfig(t *testing.T) {
	cfg := mustParse(t, minimalUpstream)
	if cfg.Cache.Redis != nil {
		t.Fatalf("no cache.redis key must mean no shared tier, got %+v", cfg.Cache.Redis)
	}

	t.Setenv("REDIS_PASSWORD", "s3cret: #x")
	cfg = mustParse(t, `cache:
  redis:
    addr: valkey:6379
    username: regcache
    password: ${REDIS_PASSWORD}
    db: 3
    tls: true
`+minimalUpstream)
	r := cfg.Cache.Redis
	if r == nil || r.Addr != "valkey:6379" || r.Username != "regcache" || r.Password.Reveal() != "s3cret: #x" || r.DB != 3 {
		t.Fatalf("cache.redis = %+v", r)
	}
	if r.Timeout.D() != 250*time.Millisecond {
		t.Fatalf("timeout default %v, want 250ms", r.Timeout.D())
	}
	if !r.TLS.On() || r.KeyPrefix != "regcache:" {
		t.Fatalf("tls on = %v, key_prefix = %q; want true and the default regcache:", r.TLS.On(), r.KeyPrefix)
	}
	if s := fmt.Sprintf("%v %+v %#v", cfg, r, r); strings.Contains(s, "s3cret") {
		t.Fatalf("the Redis password is printable: %s", s)
	}

	ca := writeFile(t, "ca.pem", "not checked here")
	cfg = mustParse(t, "cache:\n  redis:\n    addr: 10.0.0.5:6380\n    key_prefix: fleet-a/\n    tls:\n      ca_file: "+ca+"\n      server_name: redis.internal\n"+minimalUpstream)
	r = cfg.Cache.Redis
	if !r.TLS.On() || r.TLS.CAFile != ca || r.TLS.ServerName != "redis.internal" || r.KeyPrefix != "fleet-a/" {
		t.Fatalf("a tls mapping must turn TLS on and keep its keys: %+v %+v", r, r.TLS)
	}
	for _, text := range []string{"tls: false", "tls:\n      enabled: false\n      server_name: x"} {
		cfg = mustParse(t, "cache:\n  redis:\n    addr: h:1\n    "+text+"\n"+minimalUpstream)
		if cfg.Cache.Redis.TLS.On() {
			t.Fatalf("%q must leave TLS off", text)
		}
	}
}

func TestRedisConfigRefusals(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.pem")
	for _, tc := range []struct{ text, want, not string }{
		{"    db: 1\n", "cache.redis.addr: must be set", ""},
		{"    addr: valkey\n", `cache.redis.addr: "valkey" is not host:port`, ""},
		{"    addr: valkey:http\n", "port must be a number", ""},
		{"    addr: valkey:70000\n", "port must be a number", ""},
		{"    addr: redis://:hunter2@valkey:6379\n", "is not host:port", "hunter2"},
		{"    addr: user:hunter2@valkey:6379\n", "is not host:port", "hunter2"},
		{"    addr: h:1\n    db: -1\n", "cache.redis.db: must not be negative", ""},
		{"    addr: h:1\n    db: two\n", "cache.redis.db", ""},
		{"    addr: h:1\n    username: u\n", "cache.redis.username: set a password too", ""},
		{"    addr: h:1\n    tls: maybe\n", "cache.redis.tls", ""},
		{"    addr: h:1\n    tls:\n      cafile: x\n", "cache.redis.tls.cafile: unknown key", ""},
		{"    addr: h:1\n    tls:\n      ca_file: " + missing + "\n", "cache.redis.tls.ca_file", ""},
		{"    addr: h:1\n    timeout: -1s\n", "cache.redis.timeout: must not be negative", ""},
		{"    addr: h:1\n    timeout: soon\n", "cache.redis.timeout", ""},
		{"    addr: h:1\n    passwd: x\n", "cache.redis.passwd: unknown key", ""},
		{"    addr: h:1\n    password: ${NO_SUCH_REDIS_VAR}\n", "NO_SUCH_REDIS_VAR", ""},
	} {
		_, err := Parse([]byte("cache:\n  redis:\n" + tc.text + minimalUpstream))
		if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.not != "" && strings.Contains(err.Error(), tc.not)) {
			t.Errorf("%q: error %v; want it to contain %q and not %q", tc.text, err, tc.want, tc.not)
		}
	}
}
