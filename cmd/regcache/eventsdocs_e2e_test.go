package main

// docs/events.md's recipes, run as written: the shell subscriber and the cron job (the
// webhook recipes are in webhooks_e2e_test.go). Only the address changes, from
// localhost:5000 to the test's regcache, and the cron job's files to the test's directory.

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
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

// docBlock is the first fenced block of lang after the line heading in docs/file.
func docBlock(t *testing.T, file, heading, lang string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", file))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("docs/%s has no %q", file, heading)
	}
	_, rest, ok = strings.Cut(rest, "```"+lang+"\n")
	if !ok {
		t.Fatalf("docs/%s: no ```%s block after %q", file, lang, heading)
	}
	block, _, _ := strings.Cut(rest, "```")
	return block
}

// movingTag is a registry with team/app:v1 and a regcache in front of it with a 200ms
// tag_ttl, and move, which retags v1 and asks for it past the TTL (a client's HEAD
// revalidates it: one tag.changed event).
func movingTag(t *testing.T, extraConfig string) (*harness.Instance, func() (from, to registrytest.Pushed)) {
	reg := registrytest.New(t, registrytest.Bearer)
	cur := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 200ms\n", harness.Upstream("reg.test", reg.URL))+extraConfig)
	const path = "/v2/reg.test/team/app/manifests/v1"
	if r := rc.Do(t, http.MethodHead, path); r.Status != http.StatusOK {
		t.Fatalf("first HEAD: %d", r.Status)
	}
	return rc, func() (from, to registrytest.Pushed) {
		from, to = cur, reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
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
	line := strings.TrimSpace(docBlock(t, "events.md", "A shell subscriber, one JSON line per change:", "sh"))
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
	script := docBlock(t, "events.md", "A cron job that asks what changed since its last run, keeping its place in a file:", "sh")
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
