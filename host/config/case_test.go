package config

import "testing"

// TOML keys are case-sensitive; the decoder matches fields ignoring case.
// A key spelled in another case was taken in silence ([Limits] applied as
// [limits]), and with both spellings in one table the value was picked at
// random, a different one from run to run. Such keys are unknown keys,
// named with the spelling the node reads.
func TestKeysAreCaseSensitive(t *testing.T) {
	model := "name=\"a\"\nformat=\"onnx\"\npath=\"m\"\n"
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"both spellings", "[log]\nlevel = \"debug\"\nLEVEL = \"error\"\n",
			[]string{"log.LEVEL (line 3): unknown key (keys are case-sensitive: log.level)"}},
		{"table and key", "[Limits]\nMax_Deployments = 3\n",
			[]string{"Limits (line 1): unknown key (keys are case-sensitive: limits)", "Limits.Max_Deployments (line 2): unknown key (keys are case-sensitive: limits.max_deployments)"}},
		{"implicit table", "[Inference.batching]\nmax_batch_size = 2\n",
			[]string{"Inference: unknown key (keys are case-sensitive: inference)"}},
		{"model key", "[[models]]\n" + model + "[[models]]\nName = \"b\"\nformat=\"onnx\"\npath=\"m\"\n",
			[]string{"models.Name (line 6): unknown key (keys are case-sensitive: models.name)"}},
		{"inline", "listen = {GRPC = \"127.0.0.1:0\"}\n",
			[]string{"listen.GRPC (line 1): unknown key (keys are case-sensitive: listen.grpc)"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantParseError(t, tc.toml, tc.want) })
	}
	// Keys of the free-form tables keep their case.
	cfg, err := Parse("[node.labels]\nZone = \"x\"\n[[models]]\n"+model+"config = {Labels = \"a,b\"}\n", "/base", "node.toml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.Labels["Zone"] != "x" || cfg.Models[0].Config["Labels"] != "a,b" {
		t.Errorf("labels %v, model config %v", cfg.Node.Labels, cfg.Models[0].Config)
	}
}
