package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// snapshotTags are 1,000 tags of team/app over 20 images; even ones are asked with GET,
// odd ones with HEAD (a HEAD-only tag is saved without a body, and answers HEADs alone).
type snapshotTags struct {
	reg  *registrytest.Registry
	rec  *harness.Recorder
	imgs []registrytest.Pushed
	tags []string
	cfg  string
	path string
}

func newSnapshotTags(t *testing.T) *snapshotTags {
	t.Helper()
	s := &snapshotTags{reg: registrytest.New(t, registrytest.Bearer), tags: harness.TagNames(1000)}
	for i := range 20 {
		s.imgs = append(s.imgs, s.reg.PushImage(t, "team/app", "base"+string(rune('a'+i)), types.OCIManifestSchema1))
	}
	for i, tag := range s.tags {
		img := s.imgs[i%len(s.imgs)]
		s.reg.PutManifest(t, "team/app", tag, img.MediaType, img.Body)
	}
	s.rec = harness.Record(s.reg)
	s.path = filepath.Join(t.TempDir(), "regcache.snapshot")
	s.cfg = harness.Config("  tag_ttl: 1h\n  snapshot:\n    path: "+s.path+"\n    interval: 1h\n",
		harness.Upstream("reg.test", s.reg.URL))
	return s
}

// askAll asks every tag as newSnapshotTags says, checking each answer against upstream's
// (and X-Cache, unless xcache is "").
func (s *snapshotTags) askAll(t *testing.T, rc *harness.Instance, xcache string) {
	t.Helper()
	for i, tag := range s.tags {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodHead
		}
		r := rc.Do(t, method, "/v2/team/app/manifests/"+tag, "Accept", harness.AcceptAll)
		harness.ExpectManifest(t, method+" "+tag, r, xcache, s.imgs[i%len(s.imgs)], method)
	}
}

// TestSnapshotWarmRestart: 1,000 tags asked, regcache restarted on its snapshot, and the
// same 1,000 asked again cost upstream nothing; then a snapshot cut in half, or with a
// body altered, serves nothing wrong.
func TestSnapshotWarmRestart(t *testing.T) {
	s := newSnapshotTags(t)
	rc := startRegcache(t, s.cfg)
	if !strings.Contains(rc.Logs.String(), "no snapshot file yet") {
		t.Error("a first start does not say it has no snapshot yet")
	}
	s.askAll(t, rc, "")
	rc.Stop(t) // saves
	file, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatalf("no snapshot after shutdown: %v", err)
	}

	s.rec.Reset()
	rc = startRegcache(t, s.cfg)
	if !strings.Contains(rc.Logs.String(), `"tags":1000`) {
		t.Errorf("the restart did not load 1000 tags: %s", rc.Logs)
	}
	s.askAll(t, rc, "HIT")
	harness.ExpectNoTraffic(t, "1,000 known tags asked again after a restart", s.reg)
	rc.Stop(t)

	// One body altered: that manifest is skipped (fetched again, verified); the rest hold.
	altered := bytes.Clone(file)
	i := bytes.Index(altered, s.imgs[2].Body)
	if i < 0 {
		t.Fatal("an image's body is not in the snapshot")
	}
	altered[i+len(s.imgs[2].Body)/2] ^= 0x20
	for _, tc := range []struct {
		name string
		data []byte
		log  string
	}{
		{"one body altered", altered, `"skipped":1`},
		{"cut in half", file[:len(file)/2], "snapshot not loaded; starting empty"},
	} {
		if err := os.WriteFile(s.path, tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		s.rec.Reset()
		rc = startRegcache(t, s.cfg)
		if !strings.Contains(rc.Logs.String(), tc.log) {
			t.Errorf("%s: the start does not log %s: %s", tc.name, tc.log, rc.Logs)
		}
		s.askAll(t, rc, "") // every answer upstream's, byte for byte
		if s.reg.Total() == 0 {
			t.Errorf("%s: nothing was asked upstream", tc.name)
		}
		rc.Stop(t)
	}
}

// TestSnapshotUnwritableDirectory: a snapshot path regcache cannot write is logged at start,
// clearly, and regcache serves on.
func TestSnapshotUnwritableDirectory(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	path := filepath.Join(t.TempDir(), "no-such-dir", "regcache.snapshot")
	rc := startRegcache(t, harness.Config("  snapshot:\n    path: "+path+"\n", harness.Upstream("reg.test", reg.URL)))
	if !strings.Contains(rc.Logs.String(), "cannot write to the snapshot's directory") {
		t.Errorf("no clear log line for the unwritable directory: %s", rc.Logs)
	}
	r := rc.Do(t, http.MethodGet, "/v2/team/app/manifests/v1", "Accept", harness.AcceptAll)
	harness.ExpectManifest(t, "served", r, "MISS", img, http.MethodGet)
}
