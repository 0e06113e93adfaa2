package cache

// The shared tier's entries: Redis keys, and how tag entries and manifests are written to
// Redis and read back, verified as upstream's answers are (anything else is dropped).

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// Redis keys are readable, for operators: <prefix>tag:<upstream>/<repo>:<tag> and
// <prefix>manifest:<upstream>/<repo>@<digest>. Neither an upstream name nor a repository
// may contain ':' after the first '/', nor '@', so the forms cannot collide.
func (s *shared) tagKey(up, repo, tag string) string {
	return s.prefix + "tag:" + up + "/" + repo + ":" + tag
}

func (s *shared) manifestKey(up, repo string, d digest.Digest) string {
	return s.prefix + "manifest:" + up + "/" + repo + "@" + string(d)
}

// sharedTag is a TagEntry as stored in Redis.
type sharedTag struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	FetchedAt int64  `json:"fetchedAt"` // unix nanoseconds
	PrevD     string `json:"prevDigest,omitempty"`
	PrevM     string `json:"prevMediaType,omitempty"`
	PrevS     int64  `json:"prevSize,omitempty"`
}

func (s *shared) getTag(up, repo, tag string, now time.Time) *TagEntry {
	return readEntry(s, s.tagKey(up, repo, tag), func(data []byte) (*TagEntry, string) { return decodeTag(data, now) })
}

// readEntry reads key and decodes it. A miss, or Redis failing, is nil; an entry that does
// not decode (or a key of another Redis type) is deleted, counted, and nil.
func readEntry[T any](s *shared, key string, decode func([]byte) (*T, string)) *T {
	if !s.usable() {
		return nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	data, err := s.rdb.Get(ctx, key).Bytes()
	if wrongType(err) {
		s.drop(key, "not a string value")
		return nil
	}
	if s.result(err) != nil || err != nil {
		s.misses.Add(1)
		return nil
	}
	e, why := decode(data)
	if e == nil {
		s.drop(key, why)
		return nil
	}
	s.hits.Add(1)
	return e
}

// decodeTag reads a tag entry as Redis holds it; why says what was wrong when it is nil.
func decodeTag(data []byte, now time.Time) (e *TagEntry, why string) {
	var st sharedTag
	if json.Unmarshal(data, &st) != nil {
		return nil, "not a tag entry"
	}
	d, err := digest.Parse(st.Digest)
	// A fetch time ahead of our clock would keep the tag fresh for as long: beyond a
	// minute of clock skew between replicas it is garbage.
	if err != nil || !upstream.ValidMediaType(st.MediaType) || st.Size < 0 || st.Size > upstream.MaxManifestSize ||
		st.FetchedAt <= 0 || st.FetchedAt > now.Add(maxSkew).UnixNano() {
		return nil, "tag entry with a bad digest, media type, size or time"
	}
	e = &TagEntry{
		Descriptor: upstream.Descriptor{MediaType: st.MediaType, Digest: d, Size: st.Size},
		FetchedAt:  time.Unix(0, st.FetchedAt),
	}
	if pd, err := digest.Parse(st.PrevD); err == nil && upstream.ValidMediaType(st.PrevM) && st.PrevS >= 0 && st.PrevS <= upstream.MaxManifestSize {
		e.Previous = upstream.Descriptor{MediaType: st.PrevM, Digest: pd, Size: st.PrevS}
	}
	return e, ""
}

func encodeTag(e *TagEntry) []byte {
	data, _ := json.Marshal(sharedTag{
		Digest: string(e.Digest), MediaType: e.MediaType, Size: e.Size, FetchedAt: e.FetchedAt.UnixNano(),
		PrevD: string(e.Previous.Digest), PrevM: e.Previous.MediaType, PrevS: e.Previous.Size,
	})
	return data
}

// setTag shares e until it is past serving even as stale.
func (s *shared) setTag(up, repo, tag string, e *TagEntry, ttl time.Duration) {
	s.write(s.tagKey(up, repo, tag), encodeTag(e), ttl)
}

// A manifest is stored as "v1\n" + media type + "\n" + body.
const manifestMagic = "v1\n"

// getManifest reads a body back and verifies it against d, the digest in its key.
func (s *shared) getManifest(up, repo string, d digest.Digest) *ManifestEntry {
	if !d.Algorithm().Available() {
		return nil
	}
	return readEntry(s, s.manifestKey(up, repo, d), func(data []byte) (*ManifestEntry, string) { return decodeManifest(data, d) })
}

// decodeManifest reads a manifest entry as Redis holds it and verifies it against d, the
// digest in its key; why says what was wrong when it is nil.
func decodeManifest(data []byte, d digest.Digest) (e *ManifestEntry, why string) {
	if e, why = checkManifest(data, d); e != nil {
		e.Body = bytes.Clone(e.Body)
	}
	return e, why
}

// checkManifest is decodeManifest for data of its own: the entry's body aliases it.
func checkManifest(data []byte, d digest.Digest) (e *ManifestEntry, why string) {
	rest, ok := bytes.CutPrefix(data, []byte(manifestMagic))
	mt, body, ok2 := bytes.Cut(rest, []byte("\n"))
	if !ok || !ok2 || !upstream.ValidMediaType(string(mt)) || len(body) > upstream.MaxManifestSize {
		return nil, "not a manifest entry"
	}
	if !d.Algorithm().Available() || d.Algorithm().FromBytes(body) != d {
		return nil, "manifest body does not match its digest"
	}
	// The check upstream's answers pass: a JSON object, whose own mediaType, when it
	// names one, is the type stored beside it.
	if got, why := upstream.ManifestType(body, string(mt)); why != "" || got != string(mt) {
		return nil, "manifest body is not a JSON object or contradicts its media type"
	}
	return &ManifestEntry{Descriptor: upstream.Descriptor{MediaType: string(mt), Digest: d, Size: int64(len(body))}, Body: body}, ""
}

func encodeManifest(m upstream.Manifest) []byte {
	return encodeManifestTo(make([]byte, 0, len(manifestMagic)+len(m.MediaType)+1+len(m.Body)), m)
}

// setManifest shares a verified manifest; only whole ones, since a descriptor alone is
// in the tag entry that led to it.
func (s *shared) setManifest(up, repo string, m upstream.Manifest) {
	if m.Body != nil {
		s.write(s.manifestKey(up, repo, m.Digest), encodeManifest(m), sharedManifestTTL)
	}
}

// delTag removes a tag upstream said is gone, so that no replica serves it from Redis.
func (s *shared) delTag(up, repo, tag string) { s.remove(s.tagKey(up, repo, tag)) }
