package configs

import (
	"strings"
	"testing"
)

func TestWatchEntries(t *testing.T) {
	cfg := mustParse(t, minimalUpstream+`watch:
  - image: nginx
  - image: docker.io/linuxserver/nginx:1.27
  - repository: docker.io/library/alpine
    tags: '^3\.\d+$'
`)
	if len(cfg.Watch) != 3 {
		t.Fatalf("watch: %+v", cfg.Watch)
	}
	named, re, err := cfg.Watch[0].Named()
	if err != nil || named.String() != "docker.io/library/nginx:latest" || re != nil {
		t.Fatalf("nginx is %v, %v, %v; want docker.io/library/nginx:latest", named, re, err)
	}
	named, re, err = cfg.Watch[2].Named()
	if err != nil || named.String() != "docker.io/library/alpine" || !re.MatchString("3.20") || re.MatchString("edge") {
		t.Fatalf("repository watch: %v, %v, %v", named, re, err)
	}
}

func TestWatchRefusals(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"- tags: '.*'", "watch[0]: set either image"},
		{"- image: nginx\n    repository: nginx", "watch[0]: set either image"},
		{"- image: nginx\n    tags: '.*'", "watch[0].tags: goes with repository"},
		{"- repository: nginx", "watch[0].tags: a repository watch needs a pattern"},
		{"- repository: nginx\n    tags: '(['", `watch[0].tags: "([" is not a regular expression`},
		{"- repository: nginx:latest\n    tags: '.*'", "watch[0].repository: \"nginx:latest\" names a tag or digest"},
		{"- image: 'Nginx!'", `watch[0].image: "Nginx!" is not an image reference`},
		{"- image: nginx@sha256:" + strings.Repeat("a", 64), "names a digest, which never moves"},
		{"- image: ghcr.io/home-assistant/home-assistant:stable", `watch[0].image: registry "ghcr.io" is not configured in upstreams`},
		{"- image: nginx\n    tag: latest", "watch[0].tag: unknown key"},
		{"- image: nginx\n  - image: docker.io/library/nginx:latest", `watch[1].image: "docker.io/library/nginx:latest" is watched by watch[0] already`},
		{"- repository: alpine\n    tags: a\n  - repository: docker.io/library/alpine\n    tags: b", "watch[1].repository: \"docker.io/library/alpine\" is watched by watch[0] already"},
	} {
		_, err := Parse([]byte(minimalUpstream + "watch:\n  " + tc.entry + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("watch %q: error %v; want one saying %q", tc.entry, err, tc.want)
		}
	}
}

func TestWatchRefusesTagTTLZero(t *testing.T) {
	_, err := Parse([]byte(minimalUpstream + "    tag_ttl: 0s\nwatch:\n  - image: nginx\n"))
	if err == nil || !strings.Contains(err.Error(), "watch[0].image: upstream docker.io has a tag_ttl of 0") {
		t.Fatalf("error %v; want one naming the tag_ttl of 0", err)
	}
}

func TestWatchUpstreamNamedLikeAUser(t *testing.T) {
	_, err := Parse([]byte("default_upstream: local\nupstreams:\n  - name: local\n    url: http://127.0.0.1:5000\n" +
		"watch:\n  - image: local/team/app:v1\n"))
	want := `watch[0].image: "local/team/app:v1" reads as docker.io/local/team/app:v1`
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "local.local") {
		t.Fatalf("error %v; want one saying %q and how to name the upstream", err, want)
	}
}
