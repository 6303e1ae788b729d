// Command genmodels writes the onnxtest models into a directory:
//
//	go run ./loaders/onnx/onnxtest/cmd/genmodels -o DIR
package main

import (
	"flag"
	"log"
	"os"

	"github.com/cyxwiz/cyxwiz-node/loaders/onnx/onnxtest"
)

func main() {
	out := flag.String("o", ".", "output directory (created if missing)")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := onnxtest.WriteAll(*out); err != nil {
		log.Fatal(err)
	}
}
