package cache

import (
	"bytes"
	"encoding/json"
	"reflect"
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
		if e.Digest.Validate() != nil || !validMediaType(e.MediaType) || e.Size < 0 || e.Size > upstream.MaxManifestSize {
			t.Fatalf("accepted a bad descriptor %+v", e.Descriptor)
		}
		if e.FetchedAt.After(at.Add(maxSkew)) {
			t.Fatalf("accepted a fetch time %v ahead of %v", e.FetchedAt, at)
		}
		if e.Previous.Digest != "" && (e.Previous.Digest.Validate() != nil || !validMediaType(e.Previous.MediaType) || e.Previous.Size < 0) {
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
		if !validMediaType(e.MediaType) || len(e.Body) > upstream.MaxManifestSize {
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

// FuzzDecodeTags feeds tags pages: what is accepted is for the repository and page asked,
// holds only tags the grammar allows, becomes a body regcache builds itself, and survives
// its own encoding.
func FuzzDecodeTags(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	for _, seed := range []string{
		`{"n":100,"name":"team/app","tags":["v1","latest"],"fetchedAt":1799999999000000000}`,
		`{"n":100,"name":"team/app","tags":[],"more":true,"nextLast":"v9","nextPage":"abc","fetchedAt":1}`,
		`{"n":100,"name":"team/app","tags":["a b"],"fetchedAt":1}`,
		`{"n":100,"name":"team/other","tags":["v1"],"fetchedAt":1}`,
		`{"n":100,"name":"team/app","tags":null,"fetchedAt":1}`,
		`{"n":100,"name":"team/app","tags":["` + "\u2028" + `"],"fetchedAt":1}`,
		`{"n":100,"last":"v1","name":"team/app","tags":["v2"],"fetchedAt":1}`,
		`[]`, `null`,
	} {
		f.Add([]byte(seed), 100)
	}
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		req := TagsRequest{N: n % (MaxTagsPage + 1)}
		p, why := decodeTags(data, "team/app", req, now)
		if p == nil {
			if why == "" {
				t.Fatal("refused without a reason")
			}
			return
		}
		var body struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(p.Body, &body); err != nil || body.Name != "team/app" || body.Tags == nil || len(body.Tags) > max(req.N, 0) {
			t.Fatalf("accepted page builds body %q (%v)", p.Body, err)
		}
		for _, tag := range body.Tags {
			if !upstream.ValidTag(tag) {
				t.Fatalf("accepted tag %q", tag)
			}
		}
		if p.FetchedAt.After(now.Add(maxSkew)) {
			t.Fatalf("accepted a fetch time %v ahead of %v", p.FetchedAt, now)
		}
		again, why := decodeTags(encodeTags("team/app", req, p), "team/app", req, now)
		if again == nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip changed %+v into %+v (%s)", p, again, why)
		}
	})
}
