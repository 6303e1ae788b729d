package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
)

// An unknown key is reported with its line, as a wrong type is: README
// promises the line where the decoder knows it, and it was left out
// ("config node.toml: node.bogus: unknown key"). A key that several
// [[models]] entries hold has one recorded position: no line, rather than
// the wrong one for all but one.
func TestUnknownKeyNamesTheLine(t *testing.T) {
	model := "name=\"a\"\nformat=\"onnx\"\npath=\"m\"\n"
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"table", "[node]\nname = \"x\"\n\nbogus = 1\n", []string{"node.bogus (line 4): unknown key"}},
		{"dotted", "# c\nlisten.grpcc = \"x\"\n", []string{"listen.grpcc (line 2): unknown key"}},
		{"inline table", "\nnode = {bogus = 1}\n", []string{"node.bogus (line 2): unknown key"}},
		{"unknown table", "[nope]\na = 1\n", []string{"nope (line 1): unknown key", "nope.a (line 2): unknown key"}},
		{"quoted key", "[node]\n\"a.b\" = 1\n", []string{`node."a.b" (line 2): unknown key`}},
		{"model batching", "[[models]]\n" + model + "[models.batching]\nfoo = 1\n", []string{"models.batching.foo (line 6): unknown key"}},
		{"second model", "[[models]]\n" + model + "[[models]]\n" + model + "bogus = 1\n", []string{"models.bogus (line 9): unknown key"}},
		{"inline models", "models = [{name=\"a\", format=\"onnx\", path=\"m\"},\n  {name=\"b\", format=\"onnx\", path=\"m\", bogus = 1}]\n", []string{"models.bogus (line 2): unknown key"}},
		{"two models", "[[models]]\n" + model + "bogus = 1\n[[models]]\n" + model + "bogus = 2\n", []string{"models.bogus: unknown key; models.bogus: unknown key"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
}

// Wrong types name the key and the line, the tables of strings included:
// the decoder leaves a map alone when its value is not a table, so
// `labels = "gpu"` passed as no labels at all.
func TestWrongTypeNamesTheLine(t *testing.T) {
	model := "[[models]]\nname=\"a\"\nformat=\"onnx\"\npath=\"m\"\n"
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"string", "[listen]\n\ngrpc = 5\n", []string{"listen.grpc", "line 3"}},
		{"integer", "[limits]\nmax_deployments = \"x\"\n", []string{"limits.max_deployments", "line 2"}},
		{"bool", "[terminal]\nenabled = \"yes\"\n", []string{"terminal.enabled", "line 2"}},
		{"array", "[inference]\nproviders = \"cpu\"\n", []string{"inference.providers", "line 2"}},
		{"array element", "[inference]\nproviders = [1]\n", []string{"inference.providers", "line 2"}},
		{"second model", model + model + "name = 5\n", []string{"models.name", "line 9"}},
		{"model batching", model + "batching = 5\n", []string{"models.batching", "line 5"}},
		{"labels", "[node]\nlabels = \"gpu\"\n", []string{"node.labels (line 2): want a table of strings, got TOML type string"}},
		{"labels array", "[node]\n\nlabels = [\"gpu\"]\n", []string{"node.labels (line 3): want a table of strings, got TOML type array"}},
		{"label value", "[node.labels]\na = 5\n", []string{"node.labels.a", "line 2"}},
		{"model config", model + "config = 1\n", []string{"models[0].config (line 5): want a table of strings, got TOML type integer"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
	// Tables are what they should be.
	c, err := Parse("[node]\nlabels = {a = \"b\"}\n"+model+"[models.config]\nk = \"v\"\n", "/", "n.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Labels["a"] != "b" || c.Models[0].Config["k"] != "v" {
		t.Errorf("labels %v, config %v", c.Node.Labels, c.Models[0].Config)
	}
}

// listen.grpc and listen.http on one port were compared as host strings:
// "localhost:P" and "127.0.0.1:P" passed the check, and the node then
// failed at start with "address in use". Hosts are compared as what they
// listen on, without DNS.
func TestListenAddrsOverlap(t *testing.T) {
	for _, tc := range []struct {
		grpc, http string
		clash      bool
	}{
		{"localhost:50052", "127.0.0.1:50052", true},
		{"127.0.0.1:50052", "LOCALHOST:50052", true},
		{"localhost:50052", "[::1]:50052", true},
		{"[::ffff:127.0.0.1]:50052", "127.0.0.1:50052", true},
		{"0.0.0.0:50052", "127.0.0.1:50052", true},
		{"[::]:50052", "127.0.0.1:50052", true},
		{"[::]:50052", "localhost:50052", true},
		{":50052", "node.example:50052", true},
		{"10.0.0.1:50052", "0.0.0.0:50052", true},
		{"[0:0:0:0:0:0:0:0]:50052", "10.0.0.1:50052", true},
		{"node.example:50052", "NODE.example:50052", true},
		{"127.0.0.1:50052", "127.0.0.1:http", false},
		{"localhost:50052", "127.0.0.2:50052", false},
		{"localhost:50052", "10.0.0.1:50052", false},
		{"10.0.0.1:50052", "10.0.0.2:50052", false},
		{"node.example:50052", "127.0.0.1:50052", false},
		{"0.0.0.0:0", "127.0.0.1:0", false},
		{"localhost:50052", "localhost:9090", false},
	} {
		t.Run(tc.grpc+"/"+tc.http, func(t *testing.T) {
			_, err := Parse(fmt.Sprintf("[listen]\ngrpc = %q\nhttp = %q\n", tc.grpc, tc.http), "/", "n.toml")
			if got := err != nil; got != tc.clash {
				t.Errorf("refused = %v (%v), want %v", got, err, tc.clash)
			}
		})
	}
}

// What the check refuses really clashes: the reported pair, bound for real.
func TestListenAddrsOverlapBinds(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	if l2, err := net.Listen("tcp", "localhost:"+port); err == nil {
		l2.Close()
		t.Skip("localhost is not 127.0.0.1 here")
	}
	_, err = Parse("[listen]\ngrpc = \"localhost:"+port+"\"\nhttp = \"127.0.0.1:"+port+"\"\n", "/", "n.toml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("accepted two listen addresses that cannot both bind: %v", err)
	}
}
