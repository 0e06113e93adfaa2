package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/cache/redistest"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// snapshotFixture is a registry with an image (v1, asked with GET), an index (v2, asked
// with HEAD only) and the image's config blob, and a file holding a snapshot of a cache
// that asked them.
type snapshotFixture struct {
	reg      *registrytest.Registry
	img, idx registrytest.Pushed
	config   digest.Digest
	fetched  time.Time // when v1 was fetched, as the saved cache holds it
	path     string
	file     []byte
}

var snapCfg = Config{MaxStale: time.Hour, RevalidateWait: time.Second, Snapshots: true}

func newSnapshotFixture(t *testing.T) *snapshotFixture {
	t.Helper()
	f := &snapshotFixture{reg: registrytest.New(t, registrytest.Bearer)}
	f.img = f.reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	f.idx = f.reg.PushIndex(t, "team/app", "v2", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	h, _ := f.reg.ConfigOf(t, "team/app", "v1")
	f.config = digest.Digest(h.String())
	c, o := newLocal(t, f.reg, snapCfg, time.Hour)
	ctx := context.Background()
	if _, err := c.Manifest(ctx, o, "team/app", "v1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Manifest(ctx, o, "team/app", "v2", false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Blob(ctx, o, "team/app", f.config, BlobRequest{Body: true}); err != nil {
		t.Fatal(err)
	}
	f.fetched = c.store.tag(tagKey(o.Registry.Name(), "team/app", "v1")).FetchedAt
	f.path = filepath.Join(t.TempDir(), "snapshot")
	st, err := c.SaveSnapshot(f.path, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Tags != 2 || st.Manifests != 1 || st.Blobs != 1 {
		t.Fatalf("saved %+v, want 2 tags, 1 manifest (v1's body), 1 blob", st)
	}
	if left, _ := filepath.Glob(f.path + ".tmp*"); len(left) > 0 {
		t.Errorf("the temporary file is left: %v", left)
	}
	if f.file, err = os.ReadFile(f.path); err != nil {
		t.Fatal(err)
	}
	return f
}

// load starts a cache on data (written to a file of its own) and says what it loaded.
func (f *snapshotFixture) load(t *testing.T, data []byte) (*Cache, *Origin, SnapshotStats, error) {
	t.Helper()
	c, o := newLocal(t, f.reg, snapCfg, time.Hour)
	path := filepath.Join(t.TempDir(), "snapshot")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := c.LoadSnapshot(path, func(up string) *Origin {
		if up == o.Registry.Name() {
			return o
		}
		return nil
	}, time.Now())
	return c, o, st, err
}

// expectEmpty: a cache that loaded nothing answers from upstream, right.
func (f *snapshotFixture) expectEmpty(t *testing.T, c *Cache, o *Origin, what string) {
	t.Helper()
	f.reg.ResetCounts()
	a, err := c.Manifest(context.Background(), o, "team/app", "v1", true)
	if err != nil || a.Status != Miss || string(a.Digest) != f.img.Digest || !bytes.Equal(a.Body, f.img.Body) {
		t.Errorf("%s: v1 answered %v %s (%v); want a MISS with the pushed image", what, a.Status, a.Digest, err)
	}
	if f.reg.Total() == 0 {
		t.Errorf("%s: upstream was not asked", what)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	f := newSnapshotFixture(t)
	c, o, st, err := f.load(t, f.file)
	if err != nil || st.Tags != 2 || st.Manifests != 1 || st.Blobs != 1 || st.Skipped != 0 {
		t.Fatalf("loaded %+v, %v", st, err)
	}
	f.reg.ResetCounts()
	ctx := context.Background()
	a, err := c.Manifest(ctx, o, "team/app", "v1", true)
	if err != nil || a.Status != Hit || string(a.Digest) != f.img.Digest || a.MediaType != f.img.MediaType || !bytes.Equal(a.Body, f.img.Body) {
		t.Errorf("v1 GET: %v %s %s (%v); want a HIT with the pushed image", a.Status, a.Digest, a.MediaType, err)
	}
	a, err = c.Manifest(ctx, o, "team/app", "v2", false)
	if err != nil || a.Status != Hit || string(a.Digest) != f.idx.Digest || a.Size != int64(len(f.idx.Body)) {
		t.Errorf("v2 HEAD: %v %s %d (%v); want a HIT naming the pushed index", a.Status, a.Digest, a.Size, err)
	}
	b, st2, err := c.Blob(ctx, o, "team/app", f.config, BlobRequest{Body: true})
	if err != nil || st2 != Hit || digest.FromBytes(b.Data) != f.config {
		t.Errorf("config blob: %v (%v)", st2, err)
	}
	if n := f.reg.Total(); n != 0 {
		t.Errorf("upstream was asked %d times after a warm start", n)
	}
	// v2's body was never fetched: a GET costs one upstream GET by digest, verified.
	a, err = c.Manifest(ctx, o, "team/app", "v2", true)
	if err != nil || a.Status != Miss || !bytes.Equal(a.Body, f.idx.Body) {
		t.Errorf("v2 GET: %v (%v); want a MISS with the index", a.Status, err)
	}
	// The fetch times were kept: v1 is as old as it was, not as old as the load.
	te := c.store.tag(tagKey(o.Registry.Name(), "team/app", "v1"))
	if te == nil || !te.FetchedAt.Equal(f.fetched) || te.TTL != time.Hour {
		t.Errorf("v1's entry: %+v", te)
	}
}

func TestSnapshotTruncatedLoadsNothing(t *testing.T) {
	f := newSnapshotFixture(t)
	cuts := []int{0, 1, headerLen - 1, headerLen, headerLen + 5, len(f.file) / 2, len(f.file) - 1}
	for i := 1; i < 12; i++ {
		cuts = append(cuts, len(f.file)*i/12)
	}
	for _, cut := range cuts {
		c, o, st, err := f.load(t, f.file[:cut])
		if err == nil {
			t.Errorf("cut at %d of %d bytes: loaded %+v without an error", cut, len(f.file), st)
			continue
		}
		f.expectEmpty(t, c, o, "cut at "+strconv.Itoa(cut))
	}
}

// records returns where each record's payload starts and ends in a snapshot file.
func records(t *testing.T, file []byte) [][2]int {
	t.Helper()
	var out [][2]int
	for at := headerLen; at < len(file); {
		n := int(binary.BigEndian.Uint32(file[at:]))
		out = append(out, [2]int{at + recordHeaderLen, at + recordHeaderLen + n})
		at += recordHeaderLen + n
	}
	return out
}

// alterBody flips a byte of the image's manifest body; with fixCRC the record's checksum
// is recomputed, so that only the digest check can find it.
func (f *snapshotFixture) alterBody(t *testing.T, fixCRC bool) []byte {
	t.Helper()
	data := bytes.Clone(f.file)
	i := bytes.Index(data, f.img.Body)
	if i < 0 {
		t.Fatal("the image's body is not in the file")
	}
	data[i+len(f.img.Body)/2] ^= 0x20
	if fixCRC {
		for _, r := range records(t, data) {
			if r[0] <= i && i < r[1] {
				binary.BigEndian.PutUint32(data[r[0]-8:], crc32.Checksum(data[r[0]:r[1]], castagnoli))
				binary.BigEndian.PutUint32(data[r[0]-4:], crc32.Checksum(data[r[0]-12:r[0]-4], castagnoli))
			}
		}
	}
	return data
}

func TestSnapshotAlteredBodySkipped(t *testing.T) {
	f := newSnapshotFixture(t)
	for _, fixCRC := range []bool{false, true} {
		c, o, st, err := f.load(t, f.alterBody(t, fixCRC))
		if err != nil || st.Manifests != 0 || st.Skipped != 1 || st.Tags != 2 {
			t.Fatalf("checksum fixed %v: loaded %+v, %v; want the body alone skipped", fixCRC, st, err)
		}
		f.reg.ResetCounts()
		// The tag entry stands (a HEAD is a hit); its body is fetched again, verified.
		a, err := c.Manifest(context.Background(), o, "team/app", "v1", false)
		if err != nil || a.Status != Hit || string(a.Digest) != f.img.Digest {
			t.Errorf("checksum fixed %v: v1 HEAD %v %s (%v)", fixCRC, a.Status, a.Digest, err)
		}
		a, err = c.Manifest(context.Background(), o, "team/app", "v1", true)
		if err != nil || a.Status != Miss || !bytes.Equal(a.Body, f.img.Body) || f.reg.Count("GET", "manifest") != 1 {
			t.Errorf("checksum fixed %v: v1 GET %v (%v), %d GETs; want the pushed body, fetched once",
				fixCRC, a.Status, err, f.reg.Count("GET", "manifest"))
		}
		if _, err := c.Manifest(context.Background(), o, "team/app", f.img.Digest, true); err != nil {
			t.Error(err)
		}
	}
}

func TestSnapshotBadFilesLoadNothing(t *testing.T) {
	f := newSnapshotFixture(t)
	future := bytes.Clone(f.file)
	binary.BigEndian.PutUint16(future[len(snapshotMagic):], snapshotVersion+1)
	binary.BigEndian.PutUint32(future[headerLen-4:], crc32.Checksum(future[:headerLen-4], castagnoli))
	header := bytes.Clone(f.file)
	header[len(snapshotMagic)+5] ^= 1 // the written-at time
	framing := bytes.Clone(f.file)
	framing[headerLen+1] ^= 1 // the first record's length
	for _, tc := range []struct {
		name string
		data []byte
		why  string
	}{
		{"empty", nil, "empty"},
		{"foreign", []byte(`{"tags":["latest"]}` + strings.Repeat("x", 100)), "not a regcache snapshot"},
		{"future version", future, "format version 2"},
		{"corrupt header", header, "corrupt header"},
		{"corrupt framing", framing, "corrupt at byte"},
		{"trailing data", append(bytes.Clone(f.file), 0), "after the end record"},
	} {
		c, o, st, err := f.load(t, tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: loaded %+v, %v; want an error saying %q", tc.name, st, err, tc.why)
		}
		f.expectEmpty(t, c, o, tc.name)
	}
	c, _ := newLocal(t, f.reg, snapCfg, time.Hour)
	if _, err := c.LoadSnapshot(filepath.Join(t.TempDir(), "none"), nil, time.Now()); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("missing file: %v", err)
	}
}

// TestSnapshotSkipsWhatNoLongerServes: an upstream no longer configured, and a tag past
// max_stale at load, are not loaded; a fetch time in the future is refused.
func TestSnapshotSkipsWhatNoLongerServes(t *testing.T) {
	f := newSnapshotFixture(t)
	c, o := newLocal(t, f.reg, snapCfg, time.Hour)
	st, err := c.LoadSnapshot(f.path, func(string) *Origin { return nil }, time.Now())
	if err != nil || st.Tags+st.Manifests+st.Blobs != 0 || st.Skipped != 4 {
		t.Errorf("no upstream configured: %+v, %v", st, err)
	}
	c, o = newLocal(t, f.reg, snapCfg, time.Hour)
	later := time.Now().Add(3 * time.Hour) // past tag_ttl (1h) + max_stale (1h)
	st, err = c.LoadSnapshot(f.path, func(string) *Origin { return o }, later)
	if err != nil || st.Tags != 0 || st.Manifests != 1 || st.Skipped != 2 {
		t.Errorf("past max_stale: %+v, %v", st, err)
	}
	c, o = newLocal(t, f.reg, snapCfg, time.Hour)
	earlier := time.Now().Add(-time.Hour) // the clock went back an hour
	st, err = c.LoadSnapshot(f.path, func(string) *Origin { return o }, earlier)
	if err != nil || st.Tags != 0 || st.Skipped != 2 {
		t.Errorf("fetched in the future: %+v, %v", st, err)
	}
}

// TestSnapshotIntoASmallerCache: a file saved with a larger max_size stages no more than
// the new one holds: the tags are kept and the bodies past it left out.
func TestSnapshotIntoASmallerCache(t *testing.T) {
	f := newSnapshotFixture(t)
	cfg := snapCfg
	cfg.MaxSize = 300 // less than one entry's overhead
	c, o := newLocal(t, f.reg, cfg, time.Hour)
	st, err := c.LoadSnapshot(f.path, func(string) *Origin { return o }, time.Now())
	if err != nil || st.Tags != 2 || st.Manifests != 0 || st.Blobs != 0 || st.Skipped != 2 {
		t.Errorf("loaded %+v, %v; want the 2 tags, the body and the blob skipped", st, err)
	}
}

// TestSnapshotWriteFailureKeepsOld: a save that cannot write leaves the last good file.
func TestSnapshotWriteFailureKeepsOld(t *testing.T) {
	f := newSnapshotFixture(t)
	c, _ := newLocal(t, f.reg, snapCfg, time.Hour)
	// A name so long that its temporary file's name (name.tmp-NNN) cannot be created.
	long := filepath.Join(filepath.Dir(f.path), strings.Repeat("s", 250))
	if err := os.WriteFile(long, f.file, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SaveSnapshot(long, time.Now()); err == nil {
		t.Error("a save whose temporary file cannot be created succeeded")
	}
	if got, _ := os.ReadFile(long); !bytes.Equal(got, f.file) {
		t.Error("the last good snapshot changed")
	}
	c.Close()
	if _, err := c.SaveSnapshot(f.path, time.Now()); err == nil {
		t.Error("a closed cache saved")
	}
	if got, _ := os.ReadFile(f.path); !bytes.Equal(got, f.file) {
		t.Error("a closed cache replaced the last good snapshot")
	}
}

// BenchmarkSnapshotLoad loads 100,000 tag entries, each pointing at a manifest of its own
// (an OCI index of four platforms, ~1.2 KB: what the budget is about), and reports the
// file's size against its budget: twice the bodies' bytes plus 200 bytes per tag entry.
// docs/performance.md's figures are
// go test -run '^$' -bench SnapshotLoad -benchtime 5x ./cache.
func BenchmarkSnapshotLoad(b *testing.B) {
	const tags = 100_000
	cfg := Config{MaxSize: 1 << 30, MaxStale: time.Hour, Snapshots: true}
	reg, err := upstream.New(upstream.Options{Name: "docker.io", URL: "https://registry-1.docker.io"})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	o := &Origin{Registry: reg, TagTTL: time.Hour}
	src, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	var bodyBytes int64
	for i := range tags {
		body := indexBody(i)
		bodyBytes += int64(len(body))
		repo := fmt.Sprintf("library/app-%05d", i/10)
		d := upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: digest.FromBytes(body), Size: int64(len(body))}
		src.putManifest("docker.io", repo, upstream.Manifest{Descriptor: d, Body: body})
		src.putTag(tagKey("docker.io", repo, "v1."+strconv.Itoa(i%10)), d, now, time.Hour, upstream.Descriptor{}, nil)
	}
	path := filepath.Join(b.TempDir(), "snapshot")
	st, err := src.SaveSnapshot(path, now)
	src.Close()
	if err != nil || st.Tags != tags || st.Manifests != tags {
		b.Fatalf("saved %+v, %v", st, err)
	}
	budget := 2*bodyBytes + 200*tags
	var cpu time.Duration // the process's CPU time: a figure a busy machine does not inflate as it does the wall clock's
	b.ResetTimer()
	for range b.N {
		b.StopTimer() // a cache of 1 GiB is built, and closed, outside the load's time
		c, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		cpu0 := cpuTime()
		b.StartTimer()
		got, err := c.LoadSnapshot(path, func(string) *Origin { return o }, now)
		b.StopTimer()
		cpu += cpuTime() - cpu0
		c.Close()
		if err != nil || got.Tags != tags || got.Manifests != tags {
			b.Fatalf("loaded %+v, %v", got, err)
		}
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(st.Bytes), "file-bytes")
	b.ReportMetric(float64(budget), "budget-bytes")
	b.ReportMetric(float64(bodyBytes), "body-bytes")
}

// indexBody is an OCI index of four platforms, unique to i.
func indexBody(i int) []byte {
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for p, plat := range []string{`"architecture":"amd64","os":"linux"`, `"architecture":"arm64","os":"linux","variant":"v8"`,
		`"architecture":"arm","os":"linux","variant":"v7"`, `"architecture":"s390x","os":"linux"`} {
		if p > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"`)
		b.WriteString(string(digest.FromString(strconv.Itoa(i) + "/" + strconv.Itoa(p))))
		b.WriteString(`","size":` + strconv.Itoa(1000+p+i%500) + `,"platform":{` + plat + `}}`)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSnapshotsSaveOnIntervalAndStop: the interval's saves and the last one at Stop.
func TestSnapshotsSaveOnIntervalAndStop(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "v2", types.OCIManifestSchema1)
	c, o := newLocal(t, reg, snapCfg, time.Hour)
	if _, err := c.Manifest(context.Background(), o, "team/app", "v1", true); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snapshot")
	s := c.StartSnapshots(path, 20*time.Millisecond)
	loaded := func() SnapshotStats {
		c2, _ := newLocal(t, reg, snapCfg, time.Hour)
		st, _ := c2.LoadSnapshot(path, func(string) *Origin { return o }, time.Now())
		return st
	}
	deadline := time.Now().Add(10 * time.Second)
	for loaded().Tags != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no save on the interval")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.Manifest(context.Background(), o, "team/app", "v2", true); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if st := loaded(); st.Tags != 2 || st.Manifests != 2 {
		t.Errorf("after Stop the file holds %+v, want both tags and bodies", st)
	}
	(*Snapshots)(nil).Stop() // without cache.snapshot
}

// TestSnapshotWithRedis: with the shared tier on, a snapshot still holds this replica's
// memory; a restart with Redis gone answers from it, costing upstream nothing.
func TestSnapshotWithRedis(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	withRedis := func() (*Cache, *Origin) {
		cfg := snapCfg
		cfg.Redis = &RedisConfig{Addr: rs.Addr, KeyPrefix: "rc-test:", OpTimeout: 100 * time.Millisecond}
		return newLocal(t, reg, cfg, time.Hour)
	}
	c, o := withRedis()
	if _, err := c.Manifest(context.Background(), o, "team/app", "v1", true); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snapshot")
	if st, err := c.SaveSnapshot(path, time.Now()); err != nil || st.Tags != 1 || st.Manifests != 1 {
		t.Fatalf("saved %+v, %v", st, err)
	}
	rs.Kill()
	c, o = withRedis()
	if _, err := c.LoadSnapshot(path, func(string) *Origin { return o }, time.Now()); err != nil {
		t.Fatal(err)
	}
	reg.ResetCounts()
	a, err := c.Manifest(context.Background(), o, "team/app", "v1", true)
	if err != nil || a.Status != Hit || !bytes.Equal(a.Body, img.Body) || reg.Total() != 0 {
		t.Errorf("after a restart with Redis gone: %v (%v), %d upstream requests; want a HIT, none", a.Status, err, reg.Total())
	}
}

// TestSnapshotPassesOverRecordsTooLargeNow: a blob saved under a larger max_blob_size than
// the loading config keeps is passed over, and the rest of the file loads.
func TestSnapshotPassesOverRecordsTooLargeNow(t *testing.T) {
	f := newSnapshotFixture(t)
	big := bytes.Repeat([]byte("regcache"), (upstream.MaxManifestSize+128<<10)/8)
	d := digest.Digest(f.reg.PushBlob(t, "team/app", big))
	wide := snapCfg
	wide.MaxBlobSize, wide.MaxSize = int64(len(big))+1, 64<<20
	c, o := newLocal(t, f.reg, wide, time.Hour)
	ctx := context.Background()
	if _, err := c.Manifest(ctx, o, "team/app", "v1", true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Blob(ctx, o, "team/app", d, BlobRequest{Body: true}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snapshot")
	if st, err := c.SaveSnapshot(path, time.Now()); err != nil || st.Blobs != 1 {
		t.Fatalf("saved %+v, %v", st, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, _, st, err := f.load(t, data) // the default max_blob_size: the big blob is too large now
	if err != nil || st.Tags != 1 || st.Manifests != 1 || st.Blobs != 0 || st.Skipped != 1 {
		t.Fatalf("loaded %+v, %v; want the tag and its manifest, the big blob passed over", st, err)
	}
}

// TestSnapshotRefusesNamesNoClientCouldAsk: a record under a repository name outside the
// distribution grammar (a file regcache did not write, its checksums right) is not loaded:
// the proxy looks a request up before it checks its names.
func TestSnapshotRefusesNamesNoClientCouldAsk(t *testing.T) {
	f := newSnapshotFixture(t)
	// Each as long as team/app, so that only the name changes, not the records' framing.
	for _, bad := range []string{"-eam/app", "t__.m/ap", "../a/app", "team//ap", "Team/app"} {
		data := rewriteRecords(t, f.file, func(p []byte) []byte { return bytes.ReplaceAll(p, []byte("team/app"), []byte(bad)) })
		_, _, st, err := f.load(t, data)
		if err != nil || st.Tags+st.Manifests+st.Blobs != 0 {
			t.Errorf("%q: loaded %+v, %v; want nothing under that name", bad, st, err)
		}
	}
}

// rewriteRecords is file with each record's content passed through edit and its
// checksums made right again, as a file someone else wrote could be.
func rewriteRecords(t *testing.T, file []byte, edit func([]byte) []byte) []byte {
	t.Helper()
	out := bytes.Clone(file[:headerLen])
	for _, r := range records(t, file) {
		p := file[r[0]:r[1]]
		if p[0] != 'e' {
			p = edit(bytes.Clone(p))
		}
		var h [recordHeaderLen]byte
		binary.BigEndian.PutUint32(h[0:], uint32(len(p)))
		binary.BigEndian.PutUint32(h[4:], crc32.Checksum(p, castagnoli))
		binary.BigEndian.PutUint32(h[8:], crc32.Checksum(h[:8], castagnoli))
		out = append(append(out, h[:]...), p...)
	}
	return out
}
