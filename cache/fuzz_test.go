package cache

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// FuzzDecodeTag feeds tag entries as Redis might hold them (written by another version,
// corrupted, or planted): decoding never panics, what it accepts is well-formed and not
// fresh beyond the allowed clock skew, and it survives its own encoding unchanged.
func FuzzDecodeTag(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	d := digest.FromString("m")
	for _, seed := range []string{
		string(encodeTag(&TagEntry{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: d, Size: 512}, FetchedAt: now})),
		string(encodeTag(&TagEntry{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeDockerManifest, Digest: d, Size: 1}, FetchedAt: now.Add(-time.Hour),
			Previous: upstream.Descriptor{MediaType: upstream.MediaTypeOCIManifest, Digest: digest.FromString("p"), Size: 9}})),
		`{"digest":"sha256:zz","mediaType":"a/b","size":1,"fetchedAt":1}`,
		`{"digest":"` + string(d) + `","mediaType":"text/html\r\nX: 1","size":1,"fetchedAt":1}`,
		`{"digest":"` + string(d) + `","mediaType":"a/b","size":-1,"fetchedAt":9223372036854775807}`,
		`null`, `[]`, `{`, ``,
	} {
		f.Add([]byte(seed), int64(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, skew int64) {
		at := now.Add(time.Duration(skew % int64(24*time.Hour)))
		e, why := decodeTag(data, at)
		if e == nil {
			if why == "" {
				t.Fatal("refused without a reason")
			}
			return
		}
		if e.Digest.Validate() != nil || !upstream.ValidMediaType(e.MediaType) || e.Size < 0 || e.Size > upstream.MaxManifestSize {
			t.Fatalf("accepted a bad descriptor %+v", e.Descriptor)
		}
		if e.FetchedAt.After(at.Add(maxSkew)) {
			t.Fatalf("accepted a fetch time %v ahead of %v", e.FetchedAt, at)
		}
		if e.Previous.Digest != "" && (e.Previous.Digest.Validate() != nil || !upstream.ValidMediaType(e.Previous.MediaType) || e.Previous.Size < 0) {
			t.Fatalf("accepted a bad previous descriptor %+v", e.Previous)
		}
		again, why := decodeTag(encodeTag(e), at)
		if again == nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip changed %+v into %+v (%s)", e, again, why)
		}
	})
}

// FuzzDecodeManifest feeds manifest entries: nothing is accepted unless its body hashes to
// the digest asked for, is a JSON object within the size limit, and agrees with its media
// type; what is accepted survives its own encoding.
func FuzzDecodeManifest(f *testing.F) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}`)
	for _, seed := range []string{
		"v1\n" + upstream.MediaTypeOCIManifest + "\n" + string(body),
		"v1\n" + upstream.MediaTypeDockerManifest + "\n" + string(body),
		"v1\n" + upstream.MediaTypeOCIIndex + "\n{\"manifests\":[]}",
		"v1\napplication/json\nnull",
		"v1\na/b\n123",
		"v2\na/b\n{}",
		string(body),
		"v1\n\n{}",
	} {
		f.Add([]byte(seed), true)
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, digestOfTail bool) {
		// Most inputs would fail the digest check at once; deriving the digest from the
		// tail lets the fuzzer reach the checks behind it.
		d := digest.FromBytes(body)
		if digestOfTail {
			if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
				if j := bytes.IndexByte(data, '\n'); j >= 0 {
					if k := bytes.IndexByte(data[j+1:], '\n'); k >= 0 {
						d = digest.FromBytes(data[j+1+k+1:])
					}
				}
			}
		}
		e, why := decodeManifest(data, d)
		if e == nil {
			if why == "" {
				t.Fatal("refused without a reason")
			}
			return
		}
		if digest.FromBytes(e.Body) != d || e.Digest != d || e.Size != int64(len(e.Body)) {
			t.Fatalf("accepted a body that is not %s", d)
		}
		if !upstream.ValidMediaType(e.MediaType) || len(e.Body) > upstream.MaxManifestSize {
			t.Fatalf("accepted media type %q, %d bytes", e.MediaType, len(e.Body))
		}
		if trimmed := bytes.TrimLeft(e.Body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
			t.Fatalf("accepted a body that is no JSON object: %q", e.Body)
		}
		again, _ := decodeManifest(encodeManifest(upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body}), d)
		if again == nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip changed %+v into %+v", e, again)
		}
	})
}

// FuzzDecodeTags feeds tags listings as Redis might hold them: what is accepted is for the
// repository asked, holds only tags the grammar allows, sorted and unique, within the
// bounds, with a continuation exactly when incomplete; every page served from it is a body
// regcache builds itself; and it survives its own encoding.
func FuzzDecodeTags(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	cfg := Config{TagsMaxCount: 1000, TagsMaxBytes: 1 << 20}
	for _, seed := range []string{
		`{"name":"team/app","tags":["latest","v1"],"complete":true,"received":2,"bytes":40,"fetchedAt":1799999999000000000}`,
		`{"name":"team/app","tags":["a"],"nextLast":"++9wYWdlOjEw","received":1,"bytes":9,"fetchedAt":1}`,
		`{"name":"team/app","tags":[],"nextPage":"abc","received":0,"bytes":0,"fetchedAt":1}`,
		`{"name":"team/app","tags":["a"],"complete":true,"truncatedBy":"cache.tags_max_bytes","received":1,"bytes":9,"fetchedAt":1}`,
		`{"name":"team/app","tags":["v2","v1"],"complete":true,"received":2,"fetchedAt":1}`,
		`{"name":"team/app","tags":["a b"],"complete":true,"received":1,"fetchedAt":1}`,
		`{"name":"team/other","tags":["v1"],"complete":true,"received":1,"fetchedAt":1}`,
		`{"name":"team/app","tags":null,"complete":true,"fetchedAt":1}`,
		`{"name":"team/app","tags":["` + "\u2028" + `"],"complete":true,"received":1,"fetchedAt":1}`,
		`[]`, `null`,
	} {
		f.Add([]byte(seed), 100)
	}
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		l, why := decodeTagList(data, "team/app", cfg, now)
		if l == nil {
			if why == "" {
				t.Fatal("refused without a reason")
			}
			return
		}
		if len(l.Tags) > cfg.TagsMaxCount || l.Complete == (l.Next != upstream.PageRequest{}) || l.FetchedAt.After(now) {
			t.Fatalf("accepted %+v", l)
		}
		for i, tag := range l.Tags {
			if !upstream.ValidTag(tag) || (i > 0 && l.Tags[i-1] >= tag) {
				t.Fatalf("accepted tag %q at %d", tag, i)
			}
		}
		// Pages from the start, after a tag it holds, and after a name between two.
		last := ""
		if len(l.Tags) > 0 && n%3 != 0 {
			last = l.Tags[abs(n)%len(l.Tags)]
			if n%3 == 1 || n%3 == -1 {
				last += "0"
			}
		}
		req := TagsRequest{N: 1 + abs(n)%MaxTagsPage, Last: last}
		p := l.page("team/app", req)
		var body struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(p.Body, &body); err != nil || body.Name != "team/app" || body.Tags == nil || len(body.Tags) > req.N {
			t.Fatalf("accepted listing builds body %q (%v)", p.Body, err)
		}
		for _, tag := range body.Tags {
			if last != "" && tag <= last {
				t.Fatalf("page after %q holds %q", last, tag)
			}
		}
		if p.More && p.NextLast != last && !upstream.ValidTag(p.NextLast) {
			t.Fatalf("next page after %q, no tag", p.NextLast)
		}
		again, why := decodeTagList(encodeTagList("team/app", l), "team/app", cfg, now)
		if again == nil || !reflect.DeepEqual(again, l) {
			t.Fatalf("round trip changed %+v into %+v (%s)", l, again, why)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -(n + 1)
	}
	return n
}

// FuzzSnapshotRecord feeds snapshot records (a file damaged, or not regcache's): reading
// never panics; a tag entry accepted is well-formed, under a name a request could make and
// not fetched after the load; a manifest or blob accepted hashes to its key's digest; and
// a descriptor survives its own encoding.
func FuzzSnapshotRecord(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	d := upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: digest.FromString("m"), Size: 512}
	body := []byte(`{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	record := func(kind byte, key string, rest []byte) []byte {
		p := appendString([]byte{kind}, key)
		return append(p, rest...)
	}
	tag := appendDescriptor(nil, d)
	tag = binary.BigEndian.AppendUint64(tag, uint64(now.Add(-time.Minute).UnixNano()))
	tag = appendDescriptor(tag, upstream.Descriptor{MediaType: "application/x.custom+json", Digest: "sha512:" + digest.Digest(strings.Repeat("ab", 64)), Size: 3})
	md := digest.FromBytes(body)
	for _, seed := range [][]byte{
		record('t', tagKey("reg.test", "team/app", "v1"), tag),
		record('t', tagKey("reg.test", "team/app", "v1"), appendDescriptor(nil, upstream.Descriptor{})),
		record('m', manifestKey("reg.test", "team/app", string(md)), encodeManifestTo(nil, upstream.Manifest{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: md}, Body: body})),
		record('b', blobKey("reg.test", "team/app", digest.FromString("cfg")), []byte("cfg")),
		record('t', "t\x00reg.test\x00../x\x00v1", tag),
		{'t'}, {'x', 0},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) == 0 {
			return
		}
		c := &Cache{cfg: Config{MaxSize: 1 << 30, MaxStale: time.Hour, MaxBlobSize: 1 << 20}}
		o := &Origin{TagTTL: time.Hour}
		r := &snapshotReader{c: c, now: now, manifests: map[string]*ManifestEntry{},
			origin: func(up string) *Origin {
				if up == "reg.test" {
					return o
				}
				return nil
			}}
		r.record(p)
		r.verify()
		for _, lt := range r.tags {
			e := lt.e
			if e.Digest.Validate() != nil || !upstream.ValidMediaType(e.MediaType) || e.Size < 0 || e.Size > upstream.MaxManifestSize {
				t.Fatalf("accepted a bad descriptor %+v", e.Descriptor)
			}
			if e.Previous != (upstream.Descriptor{}) && (e.Previous.Digest.Validate() != nil || !upstream.ValidMediaType(e.Previous.MediaType)) {
				t.Fatalf("accepted a bad previous descriptor %+v", e.Previous)
			}
			if e.FetchedAt.After(now) || !upstream.ValidTag(lt.tg) || !upstream.ValidRepository(lt.repo) || lt.key != tagKey("reg.test", lt.repo, lt.tg) {
				t.Fatalf("accepted %q fetched at %v", lt.key, e.FetchedAt)
			}
			again, rest, ok := readDescriptor(appendDescriptor(nil, e.Descriptor))
			if !ok || len(rest) != 0 || again != e.Descriptor {
				t.Fatalf("descriptor round trip: %+v -> %+v", e.Descriptor, again)
			}
		}
		for key, m := range r.manifests {
			if key != manifestKey("reg.test", strings.Split(key, "\x00")[2], string(m.Digest)) || digest.FromBytes(m.Body) != m.Digest {
				t.Fatalf("accepted manifest %q whose body does not hash to its digest", key)
			}
		}
		for _, b := range r.blobs {
			if parts := strings.Split(b.key, "\x00"); len(parts) != 4 || digest.Digest(parts[3]).Algorithm().FromBytes(b.Data) != digest.Digest(parts[3]) {
				t.Fatalf("accepted blob %q whose bytes do not hash to its digest", b.key)
			}
		}
	})
}
