package main

// docs/events.md's recipes, run as written: the shell subscriber, the cron job, and the
// webhooks for a receiver built for Docker Hub (Keel) and for Watchtower's HTTP API. Only
// addresses change (localhost:5000 to the test's regcache, a receiver's host to the test's
// receiver), and the cron job's files to the test's directory.

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// docBlock is the first fenced block of lang after the line heading in file (a path from
// the repository root: README.md, docs/events.md).
func docBlock(t *testing.T, file, heading, lang string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", file))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("%s has no %q", file, heading)
	}
	_, rest, ok = strings.Cut(rest, "```"+lang+"\n")
	if !ok {
		t.Fatalf("%s: no ```%s block after %q", file, lang, heading)
	}
	block, _, _ := strings.Cut(rest, "```")
	return block
}

// movingTag is a registry with team/app:v1 and a regcache in front of it with a 200ms
// tag_ttl, and move, which retags v1 and asks for it past the TTL (a client's HEAD
// revalidates it: one tag.changed event).
func movingTag(t *testing.T, extraConfig string) (*harness.Instance, func() (from, to registrytest.Pushed)) {
	return movingTagOn(t, "reg.test", "team/app", "v1", extraConfig)
}

// movingTagOn is movingTag for repo:tag on an upstream named name.
func movingTagOn(t *testing.T, name, repo, tag, extraConfig string) (*harness.Instance, func() (from, to registrytest.Pushed)) {
	reg := registrytest.New(t, registrytest.Bearer)
	cur := reg.PushImage(t, repo, tag, types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 200ms\n", harness.Upstream(name, reg.URL))+extraConfig)
	path := "/v2/" + name + "/" + repo + "/manifests/" + tag
	if r := rc.Do(t, http.MethodHead, path); r.Status != http.StatusOK {
		t.Fatalf("first HEAD: %d", r.Status)
	}
	return rc, func() (from, to registrytest.Pushed) {
		from, to = cur, reg.PushImage(t, repo, tag, types.OCIManifestSchema1)
		cur = to
		time.Sleep(250 * time.Millisecond)
		if r := rc.Do(t, http.MethodHead, path); r.Header.Get("Docker-Content-Digest") != to.Digest {
			t.Fatalf("HEAD after the move: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
		}
		return from, to
	}
}

func TestEventsDocsShellSubscriber(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"curl", "sed"} {
		harness.Tool(t, tool, "apt-get install "+tool)
	}
	line := strings.TrimSpace(docBlock(t, "docs/events.md", "A shell subscriber, one JSON line per change:", "sh"))
	rc, move := movingTag(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", strings.ReplaceAll(line, "http://localhost:5000", rc.URL))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	waitFor(t, "the subscriber", func() bool { return rc.Metric(t, "regcache_events_subscribers") == 1 })

	from, to := move()
	lines := make(chan string, 1)
	go func() {
		if s := bufio.NewScanner(out); s.Scan() {
			lines <- s.Text()
		}
	}()
	select {
	case got := <-lines:
		var e feed.Event
		if err := json.Unmarshal([]byte(got), &e); err != nil || e.Type != feed.TagChanged || e.Digest != to.Digest || e.PreviousDigest != from.Digest {
			t.Fatalf("the recipe printed %q (%v); want the move's event as one JSON line", got, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the recipe printed nothing within 5 s of the move")
	}
}

func TestEventsDocsCronJob(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"curl", "jq"} {
		harness.Tool(t, tool, "apt-get install "+tool)
	}
	script := docBlock(t, "docs/events.md", "A cron job that asks what changed since its last run, keeping its place in a file:", "sh")
	dir := t.TempDir()
	rc, move := movingTag(t, "")
	script = strings.NewReplacer("http://localhost:5000", rc.URL, "/var/lib/regcache-cron", dir,
		"/tmp/events.json", filepath.Join(dir, "events.json")).Replace(script)
	run := func() []feed.Event {
		t.Helper()
		if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			t.Fatalf("the recipe failed: %v\n%s", err, out)
		}
		var got struct {
			Events []feed.Event `json:"events"`
			Next   string       `json:"next"`
		}
		data, _ := os.ReadFile(filepath.Join(dir, "events.json"))
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("events.json: %v: %s", err, data)
		}
		next, _ := os.ReadFile(filepath.Join(dir, "next"))
		if strings.TrimSpace(string(next)) != got.Next {
			t.Fatalf("next file holds %q; the answer's next is %q", next, got.Next)
		}
		return got.Events
	}
	_, first := move()
	if ev := run(); len(ev) != 1 || ev[0].Digest != first.Digest {
		t.Fatalf("first run: %+v; want the one move to %s", ev, first.Digest)
	}
	if ev := run(); len(ev) != 0 {
		t.Fatalf("a run with nothing new: %+v", ev)
	}
	_, second := move()
	if ev := run(); len(ev) != 1 || ev[0].Digest != second.Digest {
		t.Fatalf("third run: %+v; want only the move to %s", ev, second.Digest)
	}
}

// keelDockerHubWebhook is the payload as Keel's Docker Hub trigger decodes it (typed: a
// field of another JSON type fails the decode, as it would in Keel).
type keelDockerHubWebhook struct {
	PushData struct {
		PushedAt int    `json:"pushed_at"`
		Images   []any  `json:"images"`
		Tag      string `json:"tag"`
		Pusher   string `json:"pusher"`
	} `json:"push_data"`
	CallbackURL string `json:"callback_url"`
	Repository  struct {
		Status          string `json:"status"`
		Description     string `json:"description"`
		IsTrusted       bool   `json:"is_trusted"`
		FullDescription string `json:"full_description"`
		RepoURL         string `json:"repo_url"`
		Owner           string `json:"owner"`
		IsOfficial      bool   `json:"is_official"`
		IsPrivate       bool   `json:"is_private"`
		Name            string `json:"name"`
		Namespace       string `json:"namespace"`
		StarCount       int    `json:"star_count"`
		CommentCount    int    `json:"comment_count"`
		DateCreated     int    `json:"date_created"`
		Dockerfile      string `json:"dockerfile"`
		RepoName        string `json:"repo_name"`
	} `json:"repository"`
}

func TestEventsDocsDockerHubReceiver(t *testing.T) {
	t.Parallel()
	got := make(chan keelDockerHubWebhook, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var hook keelDockerHubWebhook
		if r.Method != http.MethodPost || r.URL.Path != "/v1/webhooks/dockerhub" {
			t.Errorf("%s %s; Keel takes POST /v1/webhooks/dockerhub", r.Method, r.URL.Path)
		} else if err := json.NewDecoder(r.Body).Decode(&hook); err != nil {
			t.Errorf("Keel's decode fails: %v", err)
		}
		got <- hook
	}))
	defer receiver.Close()
	recipe := docBlock(t, "docs/events.md", "### Recipe: a receiver built for Docker Hub (Keel)", "yaml")
	recipe = strings.ReplaceAll(recipe, "http://keel.keel.svc:9300", receiver.URL)
	_, move := movingTagOn(t, "docker.io", "library/nginx", "latest", recipe)
	moved := time.Now()
	move()
	select {
	case hook := <-got:
		r := hook.Repository
		if r.RepoName != "library/nginx" || r.Name != "nginx" || r.Namespace != "library" || hook.PushData.Tag != "latest" ||
			hook.CallbackURL != "" || time.Unix(int64(hook.PushData.PushedAt), 0).Before(moved.Add(-2*time.Second)) {
			t.Fatalf("payload %+v; want library/nginx:latest pushed now", hook)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery within 5 s of the move")
	}
}

func TestEventsDocsWatchtower(t *testing.T) {
	// Not parallel: the token comes from the environment (t.Setenv), as the recipe has it.
	const token = "wt-token-0123456789abcdef"
	t.Setenv("WATCHTOWER_TOKEN", token)
	// Watchtower's HTTP API: POST /v1/update with the token; ?image= names images as the
	// containers were created, and a container matches when its image without the tag is
	// one of them (Watchtower's FilterByImage).
	container := "lscr.io/linuxserver/nginx:latest"
	updated := make(chan string, 4)
	watchtower := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/update" || r.Header.Get("Authorization") != "Bearer "+token {
			t.Errorf("%s %s with Authorization %q: Watchtower refuses it", r.Method, r.URL.Path, r.Header.Get("Authorization"))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		for _, image := range strings.Split(r.URL.Query().Get("image"), ",") {
			if image == strings.Split(container, ":")[0] {
				updated <- container
				return
			}
		}
		updated <- "no container matched image=" + r.URL.Query().Get("image")
	}))
	defer watchtower.Close()
	recipe := docBlock(t, "docs/events.md", "### Recipe: Watchtower's HTTP API", "yaml")
	recipe = strings.ReplaceAll(recipe, "http://watchtower:8080", watchtower.URL)
	_, move := movingTagOn(t, "lscr.io", "linuxserver/nginx", "latest", recipe)
	move()
	select {
	case c := <-updated:
		if c != container {
			t.Fatalf("Watchtower: %s", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no update call within 5 s of the move")
	}
}
