package main

// The upstream's seed: what the scenarios and the cold burst ask for.

import (
	"bytes"
	"fmt"
	"log"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// seeded is what the upstream holds that the scenarios ask for.
type seeded struct {
	indexDigest string
	indexBody   []byte
}

func seed() seeded {
	push := func(ref string, img v1.Image) {
		r, _ := name.ParseReference(upstreamAddr+"/"+ref, name.Insecure)
		if err := remote.Write(r, img); err != nil {
			log.Fatalf("seed %s: %v", ref, err)
		}
	}
	img, _ := random.Image(1024, 1)
	// An OCI index of two platforms, a Docker manifest list, a 300-tag repo, 50 burst tags.
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	list := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, arch := range []string{"amd64", "arm64"} {
		child, _ := random.Image(1024, 1)
		ociChild := mutate.ConfigMediaType(mutate.MediaType(child, types.OCIManifestSchema1), types.OCIConfigJSON)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: ociChild, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		list = mutate.AppendManifests(list, mutate.IndexAddendum{Add: child, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	for _, pair := range []struct {
		ref string
		ix  v1.ImageIndex
	}{{"bench/index:latest", idx}, {"bench/list:latest", list}} {
		r, _ := name.ParseReference(upstreamAddr+"/"+pair.ref, name.Insecure)
		if err := remote.WriteIndex(r, pair.ix); err != nil {
			log.Fatalf("seed %s: %v", pair.ref, err)
		}
	}
	push("bench/tags:t0", img)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	putTag := func(repo, tag string) {
		req, _ := http.NewRequest(http.MethodPut, "http://"+upstreamAddr+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(raw))
		req.Header.Set("Content-Type", string(mt))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			log.Fatalf("tag %s:%s: %v %v", repo, tag, err, resp)
		}
		resp.Body.Close()
	}
	for i := 1; i < 300; i++ {
		putTag("bench/tags", fmt.Sprintf("t%d", i))
	}
	push("bench/burst:t0", img)
	for i := 1; i < 150; i++ {
		putTag("bench/burst", fmt.Sprintf("t%d", i))
	}
	// 50 tags of 50 different images, for the GET burst: 50 bodies to fetch.
	for i := 0; i < 50; i++ {
		distinct, _ := random.Image(256, 1)
		push(fmt.Sprintf("bench/burstget:t%d", i), distinct)
	}
	body, _ := idx.RawManifest()
	d, _ := idx.Digest()
	return seeded{indexDigest: d.String(), indexBody: body}
}
