package configs

// Native fuzz targets for the configuration parsers: the whole YAML file, sizes, ${VAR}
// expansion and htpasswd files. A config is written by an operator rather than a client, but
// it is still text from outside the program, and it holds secrets.
//
// Each target checks invariants, not only the absence of panics. Run one with e.g.
//
//	go test -run XXX -fuzz '^FuzzParse$' -fuzztime 60s ./configs
//
// scripts/fuzz.sh runs them all in turn; checked-in seeds live in testdata/fuzz/<target>/.

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// fuzzSecret is what ${REGCACHE_FUZZ_SECRET} expands to in the fuzz targets: long enough
// for auth.secret, and easy to spot in output.
const fuzzSecret = "Fz-s3cret-7f3a9c2e-0123456789abcdef0123"

func fuzzEnv() {
	os.Setenv("REGCACHE_FUZZ_SECRET", fuzzSecret)
	os.Setenv("REGCACHE_FUZZ_A", "alpha")
	os.Setenv("REGCACHE_FUZZ_EMPTY", "")
	os.Unsetenv("REGCACHE_FUZZ_UNSET")
}

// yamlScalars calls fn for every scalar of the document with the key it sits under ("" at
// the top, "<key>" for a mapping key itself), following aliases to a bounded depth.
func yamlScalars(n *yaml.Node, key string, depth int, budget *int, fn func(key, value string)) {
	if n == nil || depth > 12 || *budget <= 0 {
		return
	}
	*budget--
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			yamlScalars(c, key, depth+1, budget, fn)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			yamlScalars(n.Content[i], "<key>", depth+1, budget, fn)
			yamlScalars(n.Content[i+1], n.Content[i].Value, depth+1, budget, fn)
		}
	case yaml.AliasNode:
		yamlScalars(n.Alias, key, depth+1, budget, fn)
	case yaml.ScalarNode:
		fn(key, n.Value)
	}
}

// secretKeys are the keys whose values are Secrets.
var secretKeys = map[string]bool{"password": true, "tokens": true, "secret": true}

// FuzzParse: the whole config. Invariants: Parse either fails or returns a config that
// validates: Lookup(default_upstream) is an upstream, names and aliases are valid and
// unique, URLs are http(s) base URLs, sizes and timeouts positive, durations not negative;
// it is deterministic; and a secret (credentials.password, auth.tokens, auth.secret) never
// shows in an error or in the config printed with any verb unless it also sits under a
// key that is no secret.
func FuzzParse(f *testing.F) {
	fuzzEnv()
	f.Add(Default())
	for _, s := range []string{
		"",
		"upstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n",
		`listen: ":5001"
default_upstream: hub
public_url: https://regcache.example.com
trust_forwarded_headers: true
cache: {max_size: 64MiB, tag_ttl: 30s, max_stale: 1h, negative_ttl: 0s, revalidate_wait: 500ms, max_blob_size: 512KiB}
auth:
  tokens: ["${REGCACHE_FUZZ_SECRET}"]
  secret: ${REGCACHE_FUZZ_SECRET}
  token_ttl: 10m
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
    aliases: [hub, index.docker.io]
    tag_ttl: 5m
    credentials: {username: bot, password: "${REGCACHE_FUZZ_SECRET}"}
  - name: registry.local:5000
    url: http://10.0.0.5:5000/
    strict_accept: true
    timeout: 10s
    connect_timeout: 1s
    tls: {insecure_skip_verify: true}
`,
		"upstreams:\n  - &u {name: a.io, url: 'https://a.io'}\n  - *u\n",
		"upstreams:\n  - name: a.io\n    url: https://user:${REGCACHE_FUZZ_SECRET}@a.io\n",
		"upstreams:\n  - name: a.io\n    url: https://a.io\n    credentials: {username: '', password: ${REGCACHE_FUZZ_SECRET}}\n",
		"auth: {secret: short}\nupstreams: [{name: x, url: 'http://x'}]\ndefault_upstream: X\n",
		"cache:\n  max_size: 1TiB\n  tag_ttl: -1s\nupstreams: []\n",
		"listen: ${REGCACHE_FUZZ_UNSET}\n",
		"listen: ${REGCACHE_FUZZ_UNSET:-:6000}\nupstreams: [{name: q, url: 'https://quay.io', tag_ttl: ~}]\ndefault_upstream: q\n",
		"upstreams:\n  - name: a.io\n    url: https://a.io\n    tls: {ca_file: /nonexistent/ca.pem}\n",
		"unknown: 1\n",
		`upstreams: [{name: a.io, url: 'https://a.io'}]
default_upstream: a.io
events:
  webhooks:
    - url: http://hooks.example/x
      secret: ${REGCACHE_FUZZ_SECRET}
      filter: {registries: [a.io], types: [tag.changed]}
    - url: http://wt:8080/v1/update?image={{.Image}}
      format: template
      headers: {Authorization: "Bearer ${REGCACHE_FUZZ_A}"}
      max_retries: 0
      queue_size: 10
`,
		"listen: [1, 2]\n",
		"{{{",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) != nil {
			if _, err := Parse(data); err == nil {
				t.Fatal("invalid YAML parsed")
			}
			return
		}
		// Where the secret shows up in the document, and files Parse would read.
		secretOnly := true
		budget := 100_000
		skip := false
		yamlScalars(&doc, "", 0, &budget, func(key, value string) {
			expanded, err := expandEnv(value)
			if err != nil {
				expanded = value
			}
			if strings.Contains(expanded, fuzzSecret) && !secretKeys[key] {
				secretOnly = false
			}
			if key == "htpasswd" && expanded != "" {
				// Parse reads this file: only let it read small regular files.
				if fi, err := os.Stat(expanded); err == nil && (!fi.Mode().IsRegular() || fi.Size() > 1<<20) {
					skip = true
				}
			}
		})
		if skip || budget <= 0 {
			return
		}
		cfg, err := Parse(data)
		if err != nil {
			if cfg != nil {
				t.Fatal("error with a config")
			}
			if secretOnly && strings.Contains(err.Error(), fuzzSecret) {
				t.Fatalf("error shows a secret: %v", err)
			}
			return
		}
		if cfg.Lookup(cfg.DefaultUpstream) == nil {
			t.Fatalf("default_upstream %q is no upstream", cfg.DefaultUpstream)
		}
		if cfg.Listen == "" || cfg.Cache.MaxSize <= 0 || cfg.Cache.MaxBlobSize <= 0 || len(cfg.Upstreams) == 0 {
			t.Fatalf("invalid config accepted: %+v", cfg)
		}
		for _, d := range []Duration{cfg.Cache.TagTTL, cfg.Cache.MaxStale, cfg.Cache.NegativeTTL, cfg.Cache.RevalidateWait} {
			if d < 0 {
				t.Fatalf("negative duration accepted: %+v", cfg.Cache)
			}
		}
		if cfg.Auth.TokenTTL <= 0 || (cfg.Auth.Secret.Reveal() != "" && len(cfg.Auth.Secret.Reveal()) < minSecretLength) {
			t.Fatal("invalid auth accepted")
		}
		seen := map[string]bool{}
		for i := range cfg.Upstreams {
			u := &cfg.Upstreams[i]
			for _, n := range append([]string{u.Name}, u.Aliases...) {
				if validName(n) != nil || seen[strings.ToLower(n)] {
					t.Fatalf("name %q accepted (invalid or used twice)", n)
				}
				seen[strings.ToLower(n)] = true
				if cfg.Lookup(strings.ToUpper(n)) != u {
					t.Fatalf("Lookup(%q) is not upstream %q", strings.ToUpper(n), u.Name)
				}
			}
			if validURL(u.URL) != nil || u.Timeout <= 0 || u.ConnectTimeout <= 0 || (u.TagTTL != nil && *u.TagTTL < 0) {
				t.Fatalf("invalid upstream accepted: %+v", u)
			}
			if cfg.TagTTLFor(u) < 0 {
				t.Fatal("negative tag TTL")
			}
		}
		again, err := Parse(data)
		if err != nil || !reflect.DeepEqual(cfg, again) {
			t.Fatalf("second Parse differs: %v", err)
		}
		if secretOnly {
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
				for _, v := range []any{cfg, *cfg, cfg.Upstreams, cfg.Auth} {
					out := fmt.Sprintf(verb, v)
					for _, leak := range []string{fuzzSecret, fmt.Sprintf("%x", fuzzSecret)} {
						if strings.Contains(out, leak) {
							t.Fatalf("%s shows the secret: %s", verb, out)
						}
					}
				}
			}
		}
	})
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"", 1}, {"B", 1}, {"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}}

// FuzzParseSize: sizes. Invariants: a size is never negative nor above 2^62; what parses
// reads back the same as a plain byte count and with surrounding space; n<unit> is exactly
// n times the unit when that fits, and an error when it does not.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256MiB", "1MiB", "512KiB", "1GiB", "2TiB", "64MB", "100", "0", "1 KiB", " 7B ", "-1", "1.5GiB", "KiB", "4611686018427387904", "4194304TiB", "+5", "1kib"} {
		f.Add(s, int64(3), uint8(2))
	}
	f.Fuzz(func(t *testing.T, s string, n int64, unit uint8) {
		size, err := ParseSize(s)
		if err == nil {
			if size < 0 || size > 1<<62 {
				t.Fatalf("ParseSize(%q) = %d", s, size)
			}
			if back, err := ParseSize(strconv.FormatInt(int64(size), 10)); err != nil || back != size {
				t.Fatalf("ParseSize(%q) = %d, which reads back as %d, %v", s, size, back, err)
			}
			if again, err := ParseSize(" \t" + s + " \n"); err != nil || again != size {
				t.Fatalf("ParseSize(%q) = %d, with spaces %d, %v", s, size, again, err)
			}
		}
		u := sizeUnits[int(unit)%len(sizeUnits)]
		for _, text := range []string{strconv.FormatInt(n, 10) + u.suffix, strconv.FormatInt(n, 10) + " " + u.suffix} {
			size, err := ParseSize(text)
			fits := n >= 0 && n <= (1<<62)/u.mult
			if fits && (err != nil || int64(size) != n*u.mult) {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", text, size, err, n*u.mult)
			}
			if !fits && err == nil {
				t.Fatalf("ParseSize(%q) = %d, want an error", text, size)
			}
		}
	})
}

// FuzzExpandEnv: ${VAR} and ${VAR:-default}. Invariants: text without ${ is returned as
// is; the result agrees with a model built on a regular expression; literal text before an
// expansion is kept; a set variable expands to its value, a set but empty one to nothing,
// an unset one without a default is an error naming it.
func FuzzExpandEnv(f *testing.F) {
	fuzzEnv()
	for _, s := range []string{
		"plain", "${REGCACHE_FUZZ_A}", "x${REGCACHE_FUZZ_EMPTY}y", "${REGCACHE_FUZZ_UNSET:-dflt}", "${REGCACHE_FUZZ_UNSET}",
		"${", "${}", "${:-x}", "$${REGCACHE_FUZZ_A}}", "${REGCACHE_FUZZ_EMPTY:-d}", "a${REGCACHE_FUZZ_A:-${x}b", "https://${REGCACHE_FUZZ_A}:${REGCACHE_FUZZ_SECRET}@x",
	} {
		f.Add(s)
	}
	ref := regexp.MustCompile(`\$\{([^}]*)\}`)
	model := func(s string) (string, bool) {
		var b strings.Builder
		for {
			loc := ref.FindStringSubmatchIndex(s)
			if loc == nil {
				if strings.Contains(s, "${") {
					return "", false
				}
				b.WriteString(s)
				return b.String(), true
			}
			if strings.Contains(s[:loc[0]], "${") {
				return "", false // an earlier ${ with no } after it
			}
			b.WriteString(s[:loc[0]])
			expr := s[loc[2]:loc[3]]
			name, def, hasDef := strings.Cut(expr, ":-")
			val, set := os.LookupEnv(name)
			switch {
			case name == "":
				return "", false
			case set && val != "":
				b.WriteString(val)
			case hasDef:
				b.WriteString(def)
			case !set:
				return "", false
			}
			s = s[loc[1]:]
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := expandEnv(s)
		if !strings.Contains(s, "${") && (err != nil || out != s) {
			t.Fatalf("expandEnv(%q) = %q, %v; want it unchanged", s, out, err)
		}
		want, ok := model(s)
		if ok != (err == nil) || (ok && out != want) {
			t.Fatalf("expandEnv(%q) = %q, %v; model: %q, %v", s, out, err, want, ok)
		}
		if err != nil && out != "" {
			t.Fatalf("error %v with output %q", err, out)
		}
		if p, perr := expandEnv("abc" + s); (perr == nil) != (err == nil) || p != "abc"+out && err == nil {
			t.Fatalf("expandEnv(abc+%q) = %q, %v; alone %q, %v", s, p, perr, out, err)
		}
		if err == nil {
			for suffix, val := range map[string]string{"${REGCACHE_FUZZ_A}": "alpha", "${REGCACHE_FUZZ_EMPTY}": "", "${REGCACHE_FUZZ_UNSET:-d}": "d"} {
				if got, err := expandEnv(s + suffix); err != nil || got != out+val {
					t.Fatalf("expandEnv(%q) = %q, %v; want %q", s+suffix, got, err, out+val)
				}
			}
			if _, err := expandEnv(s + "${REGCACHE_FUZZ_UNSET}"); err == nil || !strings.Contains(err.Error(), "REGCACHE_FUZZ_UNSET") {
				t.Fatalf("unset variable after %q: %v", s, err)
			}
		}
	})
}

// FuzzParseHtpasswd: htpasswd files. Invariants: a result has at least one user, each a
// non-empty name without ':' with a bcrypt hash whose cost parses, written in the file as
// user:hash; the order of lines does not matter; an error never shows a hash (a "hash" may
// be a plain-text password).
func FuzzParseHtpasswd(f *testing.F) {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	hash := string(h)
	hashY := "$2y$" + strings.TrimPrefix(hash, "$2a$")
	for _, s := range []string{
		"alice:" + hash + "\n",
		"# regcache users\r\n\r\nalice:" + hash + "\r\n   \n  bob:" + hashY,
		"ci-bot@example.com:" + hashY + "\n",
		"alice:" + hash + "\nbob:$apr1$Pl41nS4lt$0123456789abcdefghijkl\n",
		"carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
		"dave:Hunter2Plain\n",
		"frank:$2y$05$tooShort\n",
		"justaname\n",
		":" + hash + "\n",
		"alice:" + hash + "\nalice:" + hashY + "\n",
		"# only a comment\n",
	} {
		f.Add([]byte(s))
	}
	// The fixed words of ParseHtpasswd's messages: a "hash" that is part of them may show.
	const messages = `htpasswd line: want user:hash empty user name user "" appears twice; keep one not a bcrypt hash; regcache accepts bcrypt only (create it with htpasswd -B) malformed bcrypt hash (create it with htpasswd -B) htpasswd holds no users (add lines with htpasswd -B htpasswd USER)`
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := ParseHtpasswd("htpasswd", data)
		lines := strings.Split(string(data), "\n")
		if err != nil {
			// The message less the user names it quotes: what is left must show no hash.
			msg := err.Error()
			for _, l := range lines {
				if user, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
					msg = strings.ReplaceAll(msg, strconv.Quote(user), `""`)
				}
			}
			for _, l := range lines {
				_, hash, ok := strings.Cut(strings.TrimSpace(l), ":")
				if !ok || len(hash) < 6 || strings.Contains(messages, hash) {
					continue
				}
				if strings.Contains(msg, hash) {
					t.Fatalf("error shows the hash %q: %v", hash, msg)
				}
			}
		} else {
			if len(users) == 0 {
				t.Fatal("no users and no error")
			}
			for u, hash := range users {
				if u == "" || strings.Contains(u, ":") || !strings.HasPrefix(hash, "$2") || !strings.Contains(string(data), u+":"+hash) {
					t.Fatalf("user %q hash %q", u, hash)
				}
				if _, err := bcrypt.Cost([]byte(hash)); err != nil {
					t.Fatalf("user %q: hash whose cost does not parse", u)
				}
			}
		}
		slices.Reverse(lines)
		rev, rerr := ParseHtpasswd("htpasswd", []byte(strings.Join(lines, "\n")))
		if (rerr == nil) != (err == nil) || !reflect.DeepEqual(rev, users) {
			t.Fatalf("reversed lines: %v, %v; in order: %v, %v", rev, rerr, users, err)
		}
	})
}
