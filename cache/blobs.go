package cache

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// BlobInfo is what the cache knows of a blob: its size, and its verified bytes when it is
// small enough to keep (image configs, which Diun, Renovate and skopeo inspect read).
type BlobInfo struct {
	Size int64
	// Data is nil for a blob larger than MaxBlobSize: the caller streams it from upstream.
	Data []byte
}

func blobKey(up, repo string, d digest.Digest) string {
	return "b\x00" + up + "\x00" + repo + "\x00" + string(d)
}

// Blob answers a blob from memory or, on a miss, with one coalesced upstream GET that is
// read (up to MaxBlobSize), verified against d, and kept. A larger blob is not read: its
// size is remembered and Data left nil, so the caller opens its own stream.
func (c *Cache) Blob(ctx context.Context, o *Origin, repo string, d digest.Digest) (BlobInfo, Status, error) {
	up := o.Registry.Name()
	key := blobKey(up, repo, d)
	if v, ok := c.store.rc.Get(key); ok {
		if info, ok := v.(*BlobInfo); ok {
			return *info, Hit, nil
		}
	}
	if err := c.store.negative(negativeKey(up, repo, string(d))); err != nil {
		return BlobInfo{}, Miss, err
	}
	info, err, _ := c.blobFlights.Do(ctx, key, func() (BlobInfo, error) {
		if v, ok := c.store.rc.Get(key); ok {
			if info, ok := v.(*BlobInfo); ok {
				return *info, nil
			}
		}
		data, size, err := o.Registry.FetchBlob(context.Background(), repo, d, c.cfg.MaxBlobSize)
		if err != nil {
			var ue *upstream.Error
			errors.As(err, &ue)
			if ue != nil && ue.TooLarge && size > 0 {
				info := &BlobInfo{Size: size}
				c.store.set(key, info, 0, 0)
				return *info, nil
			}
			if ue != nil && ue.TooLarge {
				// Size unknown (chunked): nothing to remember; the caller streams.
				return BlobInfo{Size: -1}, nil
			}
			c.remember(up, repo, string(d), err)
			return BlobInfo{}, err
		}
		info := &BlobInfo{Size: int64(len(data)), Data: data}
		c.store.set(key, info, int64(len(data)), 0)
		return *info, nil
	})
	return info, Miss, err
}
