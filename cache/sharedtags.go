package cache

import (
	"encoding/json"
	"time"

	"regcache/upstream"
)

// A repository's tags listing is shared as one entry, <prefix>tags:<upstream>/<repo>,
// JSON. The key has no '?' (pages were once shared under <repo>?n=..&last=..), so an entry
// of that older form is never read as a listing.
func (s *shared) tagListKey(up, repo string) string {
	return s.prefix + "tags:" + up + "/" + repo
}

// sharedTagList is a tagList as stored in Redis.
type sharedTagList struct {
	Name        string   `json:"name"`
	Tags        []string `json:"tags"`
	Complete    bool     `json:"complete,omitempty"`
	TruncatedBy string   `json:"truncatedBy,omitempty"`
	NextLast    string   `json:"nextLast,omitempty"`
	NextPage    string   `json:"nextPage,omitempty"`
	Received    int      `json:"received"`
	Bytes       int      `json:"bytes"`
	FetchedAt   int64    `json:"fetchedAt"` // unix nanoseconds
}

// maxPageToken bounds an upstream continuation shared in a listing; real ones (ECR's,
// Quay's) are a few hundred bytes.
const maxPageToken = 4096

// maxSharedTagList bounds a stored listing: cfg's count of tags of up to 128 characters,
// quoted, and the rest of the entry.
func maxSharedTagList(cfg Config) int {
	return cfg.TagsMaxCount*131 + 2*maxPageToken + 1024
}

func (s *shared) getTagList(up, repo string, cfg Config, now time.Time) *tagList {
	return readEntry(s, s.tagListKey(up, repo), func(data []byte) (*tagList, string) { return decodeTagList(data, repo, cfg, now) })
}

// decodeTagList reads a listing as Redis holds it, for repo, and checks it as regcache
// builds them: tags inside the grammar, sorted without duplicates, within cfg's bounds,
// and a continuation exactly when incomplete. Answers are rebuilt from the parsed tags,
// never passed through.
func decodeTagList(data []byte, repo string, cfg Config, now time.Time) (*tagList, string) {
	var st sharedTagList
	if len(data) > maxSharedTagList(cfg) || json.Unmarshal(data, &st) != nil {
		return nil, "not a tags listing"
	}
	if st.Name != repo || st.FetchedAt <= 0 || st.FetchedAt > now.Add(maxSkew).UnixNano() {
		return nil, "tags listing for another repository, or with a bad time"
	}
	if len(st.Tags) > cfg.TagsMaxCount || st.Received < len(st.Tags) || st.Received > cfg.TagsMaxCount ||
		st.Bytes < 0 || st.Bytes > cfg.TagsMaxBytes {
		return nil, "tags listing beyond the bounds"
	}
	for i, t := range st.Tags {
		if !upstream.ValidTag(t) || (i > 0 && st.Tags[i-1] >= t) {
			return nil, "tags listing with an invalid tag, or out of order"
		}
	}
	// The continuation is upstream's (ECR's last= is opaque): bounded, sent back to
	// upstream only.
	hasNext := st.NextLast != "" || st.NextPage != ""
	if len(st.NextLast) > maxPageToken || len(st.NextPage) > maxPageToken || st.Complete == hasNext ||
		(st.TruncatedBy != "" && (!st.Complete || (st.TruncatedBy != truncatedByCount && st.TruncatedBy != truncatedByBytes))) {
		return nil, "tags listing with a bad continuation"
	}
	if st.Tags == nil {
		st.Tags = []string{}
	}
	at := time.Unix(0, st.FetchedAt)
	if at.After(now) {
		at = now // within maxSkew: taken as fetched now
	}
	return &tagList{Tags: st.Tags, Complete: st.Complete, TruncatedBy: st.TruncatedBy,
		Next:     upstream.PageRequest{Last: st.NextLast, NextPage: st.NextPage},
		Received: st.Received, Bytes: st.Bytes, FetchedAt: at}, ""
}

func encodeTagList(repo string, l *tagList) []byte {
	data, _ := json.Marshal(sharedTagList{Name: repo, Tags: l.Tags, Complete: l.Complete, TruncatedBy: l.TruncatedBy,
		NextLast: l.Next.Last, NextPage: l.Next.NextPage, Received: l.Received, Bytes: l.Bytes, FetchedAt: l.FetchedAt.UnixNano()})
	return data
}

// setTagList shares l until it is past serving even as stale. A listing whose continuation
// is too long to share stays in this replica's memory only.
func (s *shared) setTagList(up, repo string, l *tagList, ttl time.Duration) {
	if len(l.Next.Last) > maxPageToken || len(l.Next.NextPage) > maxPageToken {
		return
	}
	s.write(s.tagListKey(up, repo), encodeTagList(repo, l), ttl)
}

func (s *shared) delTagList(up, repo string) { s.remove(s.tagListKey(up, repo)) }
