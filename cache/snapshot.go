package cache

// Warm restart: the tag entries, manifests and small blobs memory holds, written to one
// file (SaveSnapshot: a temporary file beside it, fsynced, renamed over it) and read back at
// start (LoadSnapshot), every body verified against its digest and every tag entry checked
// as the shared tier's are, before anything is stored. A file that is not whole (missing,
// cut short, its framing damaged, another program's, a later format) loads nothing; a
// record whose own checksum or digest fails is skipped alone.
//
// Format, version 1 (integers big-endian; "uvarint" is encoding/binary's):
//
//	header:  snapshotMagic | version u16 | written at, unix ns i64 | crc32c of those u32
//	record:  payload length u32 | crc32c(payload) u32 | crc32c of those 8 bytes u32 | payload
//	payload: a kind byte, then (in this order in the file)
//	  'm' manifest: key | the rest as the shared tier stores a manifest (encodeManifest)
//	  'b' blob:     key | the rest is the blob's bytes
//	  't' tag:      key | descriptor | fetched at, unix ns i64 | previous descriptor
//	  'e' end:      uvarint count of the records before it (the last record)
//	key:        uvarint length | the memory key (kind, upstream, repository, reference)
//	descriptor: media type (an index into snapshotTypes, or 0, uvarint length, bytes) |
//	            digest (0 none; 1 sha256, 32 bytes; 2 uvarint length, text) | uvarint size

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"regcache/upstream"
)

// DefaultSnapshotInterval is cache.snapshot.interval's default.
const DefaultSnapshotInterval = 5 * time.Minute

const (
	snapshotMagic   = "regcache-snap\x00\r\n" // 16 bytes; \r\n catches a text-mode copy
	snapshotVersion = 1
	headerLen       = len(snapshotMagic) + 2 + 8 + 4
	recordHeaderLen = 12
)

// snapshotTypes are the media types written as one byte (their index); append only, as
// the index is the format.
var snapshotTypes = [...]string{1: upstream.MediaTypeOCIIndex, 2: upstream.MediaTypeOCIManifest,
	3: upstream.MediaTypeDockerList, 4: upstream.MediaTypeDockerManifest}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SnapshotStats says what a snapshot held, or what of it was loaded.
type SnapshotStats struct {
	Tags, Manifests, Blobs int
	// Skipped counts records not loaded: a checksum or digest that failed, an entry that
	// did not check, an upstream no longer configured, a tag past max_stale.
	Skipped int
	Bytes   int64
}

// ErrNoSnapshot is LoadSnapshot's error when the file does not exist.
var ErrNoSnapshot = errors.New("no snapshot file")

// SaveSnapshot writes what memory holds to path, atomically: path.tmp in the same
// directory is written, fsynced and renamed over path, and the directory fsynced. Tag
// entries past serving even stale, negative answers and tags listings are not saved. It
// saves nothing without Config.Snapshots.
func (c *Cache) SaveSnapshot(path string, now time.Time) (SnapshotStats, error) {
	var tags []*TagEntry
	var manifests []*ManifestEntry
	var blobs []*blobEntry
	// A closed cache holds nothing: saved, it would replace a good snapshot with an empty one.
	c.store.closeMu.RLock()
	if c.store.closed {
		c.store.closeMu.RUnlock()
		return SnapshotStats{}, errors.New("the cache is closed")
	}
	// Pointers only under ristretto's shard locks; the encoding is done after.
	c.store.rc.IterValues(func(v any) bool {
		switch e := v.(type) {
		case *TagEntry:
			if e.key != "" && now.Sub(e.FetchedAt) <= e.TTL+c.cfg.MaxStale {
				tags = append(tags, e)
			}
		case *ManifestEntry:
			if e.key != "" && e.Body != nil {
				manifests = append(manifests, e)
			}
		case *blobEntry:
			if e.key != "" && e.Data != nil {
				blobs = append(blobs, e)
			}
		}
		return false
	})
	c.store.closeMu.RUnlock()
	// A name of its own (0600, created new): two processes saving to one path (replicas
	// sharing a volume) each rename a whole file of their own, and a link planted at a
	// fixed name is never followed.
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return SnapshotStats{}, err
	}
	tmp := f.Name()
	w := &snapshotWriter{w: bufio.NewWriterSize(f, 256<<10)}
	w.header(now)
	// Bodies first: their checks run beside the reading of what follows (LoadSnapshot).
	for _, e := range manifests {
		w.record('m', e.key, func(p []byte) []byte {
			return encodeManifestTo(p, upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body})
		})
	}
	for _, e := range blobs {
		w.record('b', e.key, func(p []byte) []byte { return append(p, e.Data...) })
	}
	for _, e := range tags {
		d := e.descriptor()
		w.record('t', e.key, func(p []byte) []byte {
			p = appendDescriptor(p, d)
			p = binary.BigEndian.AppendUint64(p, uint64(e.FetchedAt.UnixNano()))
			return appendDescriptor(p, e.Previous)
		})
	}
	w.record('e', "", func(p []byte) []byte { return binary.AppendUvarint(p, uint64(w.records)) })
	err = errors.Join(w.err, w.w.Flush(), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return SnapshotStats{}, err
	}
	// The rename is durable once the directory is.
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return SnapshotStats{Tags: len(tags), Manifests: len(manifests), Blobs: len(blobs), Bytes: w.n}, nil
}

type snapshotWriter struct {
	w       *bufio.Writer
	buf     []byte
	n       int64
	records int
	err     error
}

func (w *snapshotWriter) write(p []byte) {
	if w.err == nil {
		_, w.err = w.w.Write(p)
		w.n += int64(len(p))
	}
}

func (w *snapshotWriter) header(now time.Time) {
	h := append([]byte(snapshotMagic), 0, snapshotVersion)
	h = binary.BigEndian.AppendUint64(h, uint64(now.UnixNano()))
	w.write(binary.BigEndian.AppendUint32(h, crc32.Checksum(h, castagnoli)))
}

// record writes one record of kind for key, its payload's rest appended by body.
func (w *snapshotWriter) record(kind byte, key string, body func([]byte) []byte) {
	p := append(w.buf[:0], make([]byte, recordHeaderLen)...)
	p = append(p, kind)
	if kind != 'e' {
		p = binary.AppendUvarint(p, uint64(len(key)))
		p = append(p, key...)
	}
	p = body(p)
	payload := p[recordHeaderLen:]
	binary.BigEndian.PutUint32(p[0:], uint32(len(payload)))
	binary.BigEndian.PutUint32(p[4:], crc32.Checksum(payload, castagnoli))
	binary.BigEndian.PutUint32(p[8:], crc32.Checksum(p[:8], castagnoli))
	w.write(p)
	w.buf = p
	w.records++
}

func appendDescriptor(p []byte, d upstream.Descriptor) []byte {
	i := 0
	for j, t := range snapshotTypes {
		if j > 0 && t == d.MediaType {
			i = j
		}
	}
	p = append(p, byte(i))
	if i == 0 {
		p = appendString(p, d.MediaType)
	}
	switch {
	case d.Digest == "":
		p = append(p, 0)
	case d.Digest.Validate() == nil && d.Digest.Algorithm() == digest.SHA256: // Validate first: Algorithm panics without a ':'
		p, _ = hex.AppendDecode(append(p, 1), []byte(d.Digest.Encoded()))
	default:
		p = appendString(append(p, 2), string(d.Digest))
	}
	return binary.AppendUvarint(p, uint64(max(d.Size, 0)))
}

func appendString(p []byte, s string) []byte {
	return append(binary.AppendUvarint(p, uint64(len(s))), s...)
}

// encodeManifestTo is encodeManifest appending to p.
func encodeManifestTo(p []byte, m upstream.Manifest) []byte {
	return append(append(append(append(p, manifestMagic...), m.MediaType...), '\n'), m.Body...)
}

// LoadSnapshot reads the snapshot at path into memory, for a cache just built: every
// record is checked before anything is stored, and nothing is stored unless the file is
// whole. origin names the configured upstreams (nil for one no longer configured, whose
// entries are skipped); a tag's TTL is what its origin gives it now, counted from the
// fetch time the file kept, and a tag already past max_stale is skipped. The error says
// why nothing was loaded: ErrNoSnapshot, or the file's fault.
func (c *Cache) LoadSnapshot(path string, origin func(upstream string) *Origin, now time.Time) (SnapshotStats, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return SnapshotStats{}, ErrNoSnapshot
	}
	if err != nil {
		return SnapshotStats{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return SnapshotStats{}, err
	}
	r := &snapshotReader{r: bufio.NewReaderSize(f, 256<<10), c: c, origin: origin, now: now, fileSize: fi.Size(),
		maxRecord: int(max(upstream.MaxManifestSize, c.cfg.MaxBlobSize)) + 1<<16,
		manifests: map[string]*ManifestEntry{}}
	err = r.read()
	r.verify()
	if err != nil {
		return SnapshotStats{}, err
	}
	r.commit()
	return r.stats, nil
}

type snapshotReader struct {
	r         *bufio.Reader
	fileSize  int64 // no record reaches past it: a length read is never an allocation beyond the file
	c         *Cache
	origin    func(string) *Origin
	now       time.Time
	maxRecord int
	stats     SnapshotStats
	staged    int64 // bytes of the records read, with each entry's overhead
	// What was checked, stored only once the whole file has been read.
	manifests map[string]*ManifestEntry // by key
	pending   []pendingManifest         // manifests read, not yet handed to a checker
	checkers  chan struct{}
	checking  sync.WaitGroup
	mu        sync.Mutex // guards checked and skipped, the checkers' results
	checked   []*ManifestEntry
	skipped   int
	blobs     []*blobEntry
	tags      []loadedTag
}

type pendingManifest struct {
	key  string
	d    digest.Digest
	data []byte
}

// pendingChunk is how many manifests are handed to a checker at once.
const pendingChunk = 512

// check hands the manifests read so far to a checker goroutine, at most GOMAXPROCS at once
// (the reader waits for a free one): the digests and the JSON check are most of a load's
// time, and run beside the reading.
func (r *snapshotReader) check() {
	if len(r.pending) == 0 {
		return
	}
	if r.checkers == nil {
		r.checkers = make(chan struct{}, runtime.GOMAXPROCS(0))
	}
	chunk := r.pending
	r.pending = nil
	r.checkers <- struct{}{}
	r.checking.Go(func() {
		defer func() { <-r.checkers }()
		out := make([]*ManifestEntry, 0, len(chunk))
		for _, m := range chunk {
			if e, _ := checkManifest(m.data, m.d); e != nil { // as the shared tier's are
				e.key = m.key
				out = append(out, e)
			}
		}
		r.mu.Lock()
		r.checked = append(r.checked, out...)
		r.skipped += len(chunk) - len(out)
		r.mu.Unlock()
	})
}

// verify waits for the checkers and keeps what they passed; a manifest that failed is
// skipped.
func (r *snapshotReader) verify() {
	r.check()
	r.checking.Wait()
	for _, e := range r.checked {
		r.manifests[e.key] = e
	}
	r.stats.Manifests += len(r.checked)
	r.stats.Skipped += r.skipped
	r.checked = nil
}

type loadedTag struct {
	e             *TagEntry
	o             *Origin
	key, repo, tg string
}

func (r *snapshotReader) read() error {
	var h [headerLen]byte
	n, err := io.ReadFull(r.r, h[:])
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return errors.New("empty file")
	case err != nil || string(h[:len(snapshotMagic)]) != snapshotMagic:
		return errors.New("not a regcache snapshot")
	}
	// The version before the checksum: a later format's header may be laid out otherwise.
	if v := binary.BigEndian.Uint16(h[len(snapshotMagic):]); v != snapshotVersion {
		return fmt.Errorf("format version %d; this regcache reads version %d", v, snapshotVersion)
	}
	if crc32.Checksum(h[:headerLen-4], castagnoli) != binary.BigEndian.Uint32(h[headerLen-4:]) {
		return errors.New("corrupt header")
	}
	r.stats.Bytes = int64(headerLen)
	var buf []byte
	for records := 0; ; records++ {
		var rh [recordHeaderLen]byte
		if _, err := io.ReadFull(r.r, rh[:]); err != nil {
			return fmt.Errorf("truncated after %d records (no end record)", records)
		}
		if crc32.Checksum(rh[:8], castagnoli) != binary.BigEndian.Uint32(rh[8:]) {
			return fmt.Errorf("corrupt at byte %d (record %d's header)", r.stats.Bytes, records)
		}
		size := int(binary.BigEndian.Uint32(rh[0:]))
		if size == 0 {
			return fmt.Errorf("corrupt at byte %d (an empty record)", r.stats.Bytes)
		}
		if int64(size) > r.fileSize-r.stats.Bytes-recordHeaderLen {
			return fmt.Errorf("truncated in record %d", records)
		}
		if size > r.maxRecord {
			// Its header's checksum vouches for the length: a body larger than this config
			// keeps (max_blob_size lowered since the save) is passed over, not the file.
			if _, err := io.CopyN(io.Discard, r.r, int64(size)); err != nil {
				return fmt.Errorf("truncated in record %d", records)
			}
			r.stats.Bytes += int64(recordHeaderLen + size)
			r.stats.Skipped++
			continue
		}
		if cap(buf) < size {
			buf = make([]byte, size)
		}
		p := buf[:size]
		if _, err := io.ReadFull(r.r, p); err != nil {
			return fmt.Errorf("truncated in record %d", records)
		}
		r.stats.Bytes += int64(recordHeaderLen + size)
		if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(rh[4:]) {
			r.stats.Skipped++ // this record alone: its framing checked
			continue
		}
		if p[0] == 'e' {
			if n, k := binary.Uvarint(p[1:]); k <= 0 || n != uint64(records) {
				return fmt.Errorf("corrupt end record after %d records", records)
			}
			if _, err := r.r.ReadByte(); err != io.EOF {
				return errors.New("data after the end record")
			}
			return nil
		}
		if !r.record(p) {
			r.stats.Skipped++
		}
	}
}

// record checks one record and keeps it for commit; false when it does not check.
func (r *snapshotReader) record(p []byte) bool {
	// What is staged is bounded by max_size (a file saved with a larger one): bodies past
	// it are left out, never tags (they cost little, and are what a restart needs most).
	if r.staged += int64(len(p)) + entryOverhead; r.staged > r.c.cfg.MaxSize && p[0] != 't' {
		return false
	}
	kind := p[0]
	key, rest, ok := readString(p[1:])
	if !ok {
		return false
	}
	parts := strings.Split(key, "\x00")
	if len(parts) != 4 || parts[0] != string(kind) || !validSnapshotRepo(parts[2]) {
		return false
	}
	o := r.origin(parts[1])
	if o == nil {
		return false
	}
	switch kind {
	case 'm':
		// Verified beside the reading, on every core (check): a body that
		// hashes to the key's digest proves the digest well-formed too.
		d, ok := keyDigest(parts[3])
		if !ok {
			return false
		}
		r.pending = append(r.pending, pendingManifest{key: key, d: d, data: bytes.Clone(rest)})
		if len(r.pending) == pendingChunk {
			r.check()
		}
	case 'b':
		d, ok := keyDigest(parts[3])
		if !ok || int64(len(rest)) > r.c.cfg.MaxBlobSize || d.Algorithm().FromBytes(rest) != d {
			return false
		}
		data := bytes.Clone(rest)
		r.blobs = append(r.blobs, &blobEntry{BlobInfo: BlobInfo{Size: int64(len(data)), Data: data}, key: key})
		r.stats.Blobs++
	case 't':
		if !upstream.ValidTag(parts[3]) {
			return false
		}
		d, rest, ok := readDescriptor(rest)
		if !ok || d.Digest == "" || len(rest) < 8 {
			return false
		}
		at := int64(binary.BigEndian.Uint64(rest))
		prev, rest, ok := readDescriptor(rest[8:])
		// A fetch time ahead of the clock would keep the tag fresh for as long (the clock
		// went back, or the file is not ours): beyond a minute it is refused.
		if !ok || len(rest) != 0 || at <= 0 || at > r.now.Add(maxSkew).UnixNano() {
			return false
		}
		fetched := time.Unix(0, at)
		if fetched.After(r.now) {
			fetched = r.now // within the minute: fetched now
		}
		ttl := o.TTLFor(parts[3])
		if r.now.Sub(fetched) > ttl+r.c.cfg.MaxStale || ttl+r.c.cfg.MaxStale <= 0 {
			return false // past serving even stale
		}
		e := &TagEntry{Descriptor: d, FetchedAt: fetched, TTL: ttl, Previous: prev, key: r.c.entryKey(key)}
		r.tags = append(r.tags, loadedTag{e: e, o: o, key: key, repo: parts[2], tg: parts[3]})
		r.stats.Tags++
	default:
		return false
	}
	return true
}

// entryKey is what an entry keeps of its memory key: the key with Config.Snapshots (a save
// names what it writes by it), nothing without.
func (c *Cache) entryKey(key string) string {
	if c.cfg.Snapshots {
		return key
	}
	return ""
}

// keyDigest is a key's digest when its algorithm is one go-digest computes; whether the
// rest is well-formed is left to the bytes, which must hash to it (cheaper than Parse's
// regular expression, on every record of a load).
func keyDigest(s string) (digest.Digest, bool) {
	i := strings.IndexByte(s, ':')
	return digest.Digest(s), i > 0 && digest.Algorithm(s[:i]).Available()
}

// commit stores what read checked: manifests and blobs first, so that each tag entry
// finds its body's verified descriptor; a tag whose body was not saved gets the bodiless
// entry that learns it once fetched, as a HEAD's does (claimed).
func (r *snapshotReader) commit() {
	s := r.c.store
	for key, e := range r.manifests {
		e.key = r.c.entryKey(key)
		s.setLoaded(key, e, int64(len(e.Body)))
	}
	for _, e := range r.blobs {
		key := e.key
		e.key = r.c.entryKey(key)
		s.setLoaded(key, e, int64(len(e.Data)))
	}
	for _, t := range r.tags {
		up := t.o.Registry.Name()
		mkey := manifestKey(up, t.repo, string(t.e.Digest))
		m := r.manifests[mkey]
		if m == nil {
			m = &ManifestEntry{Descriptor: t.e.Descriptor, key: r.c.entryKey(mkey)}
			r.manifests[mkey] = m
			s.setLoaded(mkey, m, 0)
		}
		if m.Body != nil {
			t.e.Descriptor = m.Descriptor // the verified body's
		} else {
			t.e.claim = m
		}
		s.setLoaded(t.key, t.e, 0)
	}
	s.rc.Wait()
	for _, t := range r.tags {
		r.c.scheduleRefresh(t.o, t.key, t.repo, t.tg, t.e, 0)
	}
}

// setLoaded stores without waiting for each write to land (a load stores thousands; one
// Wait follows), waiting only when ristretto's write buffer is full.
func (s *store) setLoaded(key string, v any, cost int64) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	for i := 0; !s.closed && i < 100; i++ {
		if s.rc.SetWithTTL(key, v, cost+int64(len(key))+entryOverhead, 0) {
			return
		}
		s.rc.Wait()
	}
}

// readString reads a uvarint-prefixed string, a copy of its own (never the read buffer's).
func readString(p []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return "", nil, false
	}
	return string(p[k : k+int(n)]), p[k+int(n):], true
}

// readDescriptor reads what appendDescriptor wrote, checked as the shared tier checks a
// tag entry: a digest that parses, a media type that may go out as a Content-Type, a size
// within the manifest bound. An absent digest is the zero descriptor.
func readDescriptor(p []byte) (upstream.Descriptor, []byte, bool) {
	var d upstream.Descriptor
	if len(p) < 2 {
		return d, nil, false
	}
	i := int(p[0])
	p = p[1:]
	switch {
	case i == 0:
		mt, rest, ok := readString(p)
		if !ok {
			return d, nil, false
		}
		d.MediaType, p = mt, rest
	case i < len(snapshotTypes):
		d.MediaType = snapshotTypes[i]
	default:
		return d, nil, false
	}
	if len(p) < 1 {
		return d, nil, false
	}
	digestKind := p[0]
	switch digestKind {
	case 0:
		p = p[1:]
	case 1:
		if len(p) < 33 {
			return d, nil, false
		}
		d.Digest = digest.Digest("sha256:" + hex.EncodeToString(p[1:33])) // well-formed as made
		p = p[33:]
	case 2:
		s, rest, ok := readString(p[1:])
		if !ok {
			return d, nil, false
		}
		d.Digest, p = digest.Digest(s), rest
	default:
		return d, nil, false
	}
	size, k := binary.Uvarint(p)
	if k <= 0 || size > upstream.MaxManifestSize {
		return d, nil, false
	}
	d.Size, p = int64(size), p[k:]
	if d.Digest == "" {
		return upstream.Descriptor{}, p, d.MediaType == "" && d.Size == 0
	}
	return d, p, (digestKind == 1 || d.Digest.Validate() == nil) && upstream.ValidMediaType(d.MediaType)
}

// validSnapshotRepo: a repository name a client could have asked for. The proxy looks up
// a hit before it checks the names, relying on nothing invalid being stored.
func validSnapshotRepo(s string) bool { return len(s) <= 255 && upstream.ValidRepository(s) }

// Snapshots saves a cache to its file every interval and once more at Stop.
type Snapshots struct {
	c        *Cache
	path     string
	interval time.Duration
	log      *zap.Logger
	mu       sync.Mutex // one save at a time
	failing  bool       // the last save failed: logged once until one succeeds
	stop     chan struct{}
	done     chan struct{}
	stopped  sync.Once
}

// StartSnapshots saves c to path every interval, until Stop. A directory it cannot write
// to is logged now, clearly, and each save tried still: regcache serves on without one.
func (c *Cache) StartSnapshots(path string, interval time.Duration) *Snapshots {
	s := &Snapshots{c: c, path: path, interval: interval, log: c.log, stop: make(chan struct{}), done: make(chan struct{})}
	if f, err := os.CreateTemp(filepath.Dir(path), ".regcache-snapshot-probe-*"); err != nil {
		c.log.Error("cache.snapshot: cannot write to the snapshot's directory; serving on, but restarts will start cold",
			zap.String("path", path), zap.Error(err))
		s.failing = true
	} else {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}
	// Temp files a crash left behind; an hour old, none is a save still running.
	stale, _ := filepath.Glob(path + ".tmp-*")
	for _, name := range stale {
		if fi, err := os.Stat(name); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.Remove(name)
		}
	}
	go s.run()
	return s
}

func (s *Snapshots) run() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Save()
		}
	}
}

// Save writes the snapshot now, logging a failure once until a save succeeds again.
func (s *Snapshots) Save() {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	st, err := s.c.SaveSnapshot(s.path, start)
	switch {
	case err != nil && !s.failing:
		s.failing = true
		s.log.Error("cache.snapshot: saving failed; serving on (logged again only after a save succeeds)",
			zap.String("path", s.path), zap.Error(err))
	case err == nil:
		if s.failing {
			s.log.Info("cache.snapshot: saving works again", zap.String("path", s.path))
		}
		s.failing = false
		s.log.Debug("cache.snapshot: saved", zap.String("path", s.path), zap.Int("tags", st.Tags),
			zap.Int("manifests", st.Manifests), zap.Int("blobs", st.Blobs), zap.Int64("bytes", st.Bytes),
			zap.Duration("took", time.Since(start)))
	}
}

// Stop ends the interval's saves and saves once more: call it once clients are drained,
// before the cache's Close.
func (s *Snapshots) Stop() {
	if s == nil {
		return
	}
	s.stopped.Do(func() {
		close(s.stop)
		<-s.done
		s.Save()
	})
}
