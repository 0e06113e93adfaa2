// Command ceiling is the bare fasthttp server the benchmark compares regcache with: it
// answers every request with the same manifest bytes and headers regcache sends on a hit,
// doing nothing else. No registry built on fasthttp can beat it on this machine.
package main

import (
	"flag"
	"log"
	"os"

	"github.com/valyala/fasthttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5600", "listen address")
	file := flag.String("manifest", "", "file holding the manifest bytes")
	mediaType := flag.String("media-type", "application/vnd.oci.image.index.v1+json", "Content-Type")
	digest := flag.String("digest", "", "Docker-Content-Digest")
	flag.Parse()
	body, err := os.ReadFile(*file)
	if err != nil {
		log.Fatal(err)
	}
	h := func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.SetContentType(*mediaType)
		ctx.Response.Header.Set("Docker-Content-Digest", *digest)
		ctx.Response.Header.Set("Docker-Distribution-API-Version", "registry/2.0")
		ctx.Response.Header.Set("X-Cache", "HIT")
		if ctx.IsHead() {
			ctx.Response.SkipBody = true
			ctx.Response.Header.SetContentLength(len(body))
			return
		}
		ctx.Response.SetBodyRaw(body)
	}
	srv := &fasthttp.Server{Handler: h, Name: "ceiling", NoDefaultServerHeader: true}
	log.Fatal(srv.ListenAndServe(*listen))
}
