package harness

// Configs as the tests write them: a YAML text, parsed by Start exactly as the binary
// parses a file.

import "strings"

// Upstream is one upstreams: entry for a test registry, with extra lines of its own
// ("timeout: 1s", "credentials:", "  username: robot").
func Upstream(name, url string, extra ...string) string {
	s := "  - name: " + name + "\n    url: " + url + "\n"
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// CredentialsFromEnv are the Upstream lines of credentials whose password comes from the
// environment variable env, as an operator keeps it out of the file.
func CredentialsFromEnv(user, env string) []string {
	return []string{"credentials:", "  username: " + user, "  password: ${" + env + "}"}
}

// Config is a config listening on 127.0.0.1:0 whose first upstream is the default, with
// cacheLines in its cache: block (each indented two spaces, "  tag_ttl: 1s\n") and
// max_size 64MiB unless cacheLines sets it.
func Config(cacheLines string, upstreams ...string) string {
	def := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(upstreams[0], "\n", 2)[0], "  - name:"))
	if !strings.Contains(cacheLines, "max_size:") {
		cacheLines = "  max_size: 64MiB\n" + cacheLines
	}
	return "listen: 127.0.0.1:0\ndefault_upstream: " + def + "\ncache:\n" + cacheLines +
		"upstreams:\n" + strings.Join(upstreams, "")
}

// Block is a top-level block (server:, auth:) of lines, each indented two spaces, to
// append to a Config.
func Block(key string, lines ...string) string {
	s := key + ":\n"
	for _, l := range lines {
		s += "  " + l + "\n"
	}
	return s
}
