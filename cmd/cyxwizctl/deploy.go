package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

func init() {
	register("deploy", command{
		synopsis: "--id ID --model URI|FILE [--format onnx] [--sha256 H] [--pre g.wasm] [--post g.wasm] [--format-guest g.wasm] [flags]",
		summary:  "deploy a model and wait until it is ready",
		about: `Local files are sent as file:// URIs with the SHA-256 computed here, so
they need no --sha256 or --<guest>-sha256; http(s) URIs need theirs (the
node verifies what it downloads).

A model in a custom format is served by a guest exporting format_load and
format_infer (guests/examples/safetensors-mlp): give it with --format-guest;
--format then defaults to "guest".

Without --no-wait the command shows the progress and exits 0 once the
deployment is ready, 1 if it fails or is stopped first. The wait has no
deadline unless --timeout is given; if that runs out first, the command
exits 1 while the node carries on: follow it with 'cyxwizctl watch ID'.`,
		ownDeadline: true,
		run:         runDeploy,
	})
	register("ls", command{synopsis: "[--state ready,failed,...]", summary: "list deployments", run: runList})
	register("models", command{summary: "list models and their state", run: runModels})
	register("status", command{synopsis: "ID", summary: "show one deployment", minArgs: 1, maxArgs: 1, run: runStatus})
	register("stop", command{
		synopsis: "ID [--drain 10s]",
		summary:  "stop a deployment",
		about: fmt.Sprintf(`Without --timeout, the call waits for the drain plus %v; a --timeout
given on the command line is kept, and may cut the drain short.`, stopMargin),
		minArgs: 1, maxArgs: 1, ownDeadline: true, run: runStop,
	})
	register("watch", command{
		synopsis: "[ID ...]",
		summary:  "stream deployment changes (all, or the given ids)",
		about:    "It runs until interrupted, or until a --timeout given on the command line ends it (exit 0).",
		maxArgs:  -1, ownDeadline: true, run: runWatch,
	})
}

// artifactFor turns a URI or a local file into an Artifact. Local files are
// sent as file:// URIs with their SHA-256, so the node verifies what it
// loads; http(s) URIs need the digest given with sumFlag.
func artifactFor(ref, sum, sumFlag string) (*cyxwizpb.Artifact, error) {
	u, err := url.Parse(ref)
	if err == nil && (u.Scheme == "http" || u.Scheme == "https" || u.Scheme == "file" && sum != "") {
		if sum == "" {
			return nil, usagef("%s is an %s URI: give its SHA-256 with --%s", ref, u.Scheme, sumFlag)
		}
		return &cyxwizpb.Artifact{Uri: ref, Sha256: sum}, nil
	}
	if err == nil && u.Scheme == "file" {
		// A file:// URI without its digest is a local file: hashed here,
		// as the node wants it (it loads no file the caller cannot read).
		if u.Host != "" && u.Host != "localhost" || u.RawQuery != "" || u.Fragment != "" {
			return nil, usagef("%s: want file:///absolute/path", ref)
		}
		ref = u.Path
	}
	abs, err := filepath.Abs(ref)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if sum != "" && !strings.EqualFold(sum, digest) {
		return nil, fmt.Errorf("%s: sha256 is %s, not %s (--%s)", ref, digest, sum, sumFlag)
	}
	return &cyxwizpb.Artifact{Uri: (&url.URL{Scheme: "file", Path: abs}).String(), Sha256: digest, SizeBytes: n}, nil
}

// guestFlags are the flags of one guest role: its module and its digest.
type guestFlags struct {
	name     string // flag and guest name: "pre", "post", "batch-policy", "format-guest"
	role     cyxwizpb.GuestRole
	ref, sum *string
}

// deployFlags are deploy's flags.
type deployFlags struct {
	id, name, model, format, sum *string
	guests                       []guestFlags
	maxBatch, instances, memory  *uint32
	delay, guestTimeout          *time.Duration
	config                       multiFlag
	noWait, preciseClock         *bool
}

func newDeployFlags(fs *flag.FlagSet) *deployFlags {
	o := &deployFlags{
		id:     fs.String("id", "", "deployment `id` (required)"),
		name:   fs.String("name", "", "model `name` clients use (default: the id)"),
		model:  fs.String("model", "", "model `URI` (file://, http://, https://) or local file (required)"),
		format: fs.String("format", "", "model `format` (default onnx, or guest with --format-guest)"),
		sum:    fs.String("sha256", "", "model SHA-256 `digest` (required for http(s) URIs; computed for local files)"),
	}
	for _, g := range []struct {
		name, what string
		role       cyxwizpb.GuestRole
	}{
		{"pre", "preprocess", cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS},
		{"post", "postprocess", cyxwizpb.GuestRole_GUEST_ROLE_POSTPROCESS},
		{"batch-policy", "batch-policy", cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY},
		{"format-guest", "custom-format (format_load, format_infer)", cyxwizpb.GuestRole_GUEST_ROLE_FORMAT},
	} {
		o.guests = append(o.guests, guestFlags{name: g.name, role: g.role,
			ref: fs.String(g.name, "", g.what+" guest (.wasm `file` or URI)"),
			sum: fs.String(g.name+"-sha256", "", "SHA-256 `digest` of --"+g.name+" (required for http(s) URIs; computed for local files)"),
		})
	}
	o.maxBatch = uint32Var(fs, "max-batch", "most `rows` per execution (0 = node default)")
	o.delay = durationVar(fs, "max-queue-delay", 0, time.Microsecond, "how long the oldest request may wait for a batch (a `duration`: 0 = node default, else at least 1µs)")
	o.instances = uint32Var(fs, "instances", "concurrent `executions` (0 = node default)")
	o.guestTimeout = durationVar(fs, "guest-timeout", 0, 0, "per-call guest deadline (a `duration`; 0 = node default)")
	fs.Var(&o.config, "config", "`key=value` for the deployment's guests (repeatable)")
	o.noWait = fs.Bool("no-wait", false, "return once accepted")
	o.memory = uint32Var(fs, "guest-memory-pages", "memory limit of each guest in 64 KiB `pages` (0 = node default)")
	o.preciseClock = fs.Bool("guest-precise-clock", false, "give the guests full-resolution clocks (default: 1 ms ticks)")
	return o
}

// spec builds the deployment spec the flags describe.
func (o *deployFlags) spec() (*cyxwizpb.DeploymentSpec, error) {
	if *o.id == "" || *o.model == "" {
		return nil, usagef("--id and --model are required")
	}
	name := *o.name
	if name == "" {
		name = *o.id
	}
	art, err := artifactFor(*o.model, *o.sum, "sha256")
	if err != nil {
		return nil, err
	}
	format := *o.format
	if format == "" {
		format = "onnx"
		if *o.formatGuest().ref != "" {
			format = formatGuest
		}
	}
	spec := &cyxwizpb.DeploymentSpec{ModelName: name, Format: format, Model: art, Config: map[string]string{}}
	for _, kv := range o.config {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usagef("--config %q: want key=value", kv)
		}
		spec.Config[k] = v
	}
	for _, g := range o.guests {
		if *g.ref == "" {
			if *g.sum != "" {
				return nil, usagef("--%s-sha256 without --%s", g.name, g.name)
			}
			continue
		}
		gm, err := o.guest(g)
		if err != nil {
			return nil, err
		}
		spec.Guests = append(spec.Guests, gm)
	}
	if *o.maxBatch > 0 || *o.delay > 0 || *o.instances > 0 {
		spec.Batching = &cyxwizpb.BatchingConfig{MaxBatchSize: *o.maxBatch, MaxQueueDelayUs: uint64(o.delay.Microseconds()), Instances: *o.instances}
	}
	return spec, nil
}

// formatGuest is the format of a model served by a FORMAT guest.
const formatGuest = "guest"

// formatGuest returns the flags of the FORMAT guest.
func (o *deployFlags) formatGuest() guestFlags {
	for _, g := range o.guests {
		if g.role == cyxwizpb.GuestRole_GUEST_ROLE_FORMAT {
			return g
		}
	}
	panic("no format guest flag")
}

func (o *deployFlags) guest(g guestFlags) (*cyxwizpb.GuestModule, error) {
	a, err := artifactFor(*g.ref, *g.sum, g.name+"-sha256")
	if err != nil {
		return nil, err
	}
	gm := &cyxwizpb.GuestModule{Name: g.name, Artifact: a, Roles: []cyxwizpb.GuestRole{g.role},
		MemoryLimitPages: *o.memory, PreciseClock: *o.preciseClock}
	if *o.guestTimeout > 0 {
		gm.CallTimeout = durationpb.New(*o.guestTimeout)
	}
	return gm, nil
}

func runDeploy(ctx context.Context, c *client, args []string) error {
	fs := newFlagSet("deploy")
	o := newDeployFlags(fs)
	if _, err := parseArgs(c, fs, args); err != nil {
		return err
	}
	spec, err := o.spec()
	if err != nil {
		return err
	}
	cli := cyxwizpb.NewDeploymentServiceClient(c.conn)
	wctx, cancel := c.explicitDeadline(ctx)
	defer cancel()
	var stream cyxwizpb.DeploymentService_WatchDeploymentsClient
	if !*o.noWait {
		// Watch (with a snapshot) before assigning so that no change is
		// missed, whichever reaches the node first.
		if stream, err = cli.WatchDeployments(wctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{*o.id}, Snapshot: true}); err != nil {
			return err
		}
	}
	actx, acancel := c.deadline(ctx, 0)
	defer acancel()
	resp, err := cli.AssignDeployment(actx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: *o.id, Spec: spec})
	if err != nil {
		return err
	}
	if *o.noWait || settled(resp.Status.State) {
		printStatusLine(c.out, resp.Status)
		return deployErr(resp.Status)
	}
	return waitSettled(wctx, c, stream, resp.Status)
}

// waitSettled follows the deployment assigned with status from until it
// is ready, failed or stopped.
func waitSettled(ctx context.Context, c *client, stream cyxwizpb.DeploymentService_WatchDeploymentsClient, from *cyxwizpb.DeploymentStatus) error {
	bar := newProgressBar(c.out)
	last := from.State
	for {
		ev, err := stream.Recv()
		if err != nil {
			bar.done()
			return waitErr(ctx, c, from.DeploymentId, last, err)
		}
		st := ev.Status
		if st.UpdatedAt.AsTime().Before(from.UpdatedAt.AsTime()) {
			continue // from before this assignment (a re-deploy of a stopped id)
		}
		last = st.State
		bar.update(st)
		if settled(st.State) {
			bar.done()
			printStatusLine(c.out, st)
			return deployErr(st)
		}
	}
}

// waitErr explains why the wait for deployment id ended in state last
// before it settled.
func waitErr(ctx context.Context, c *client, id string, last cyxwizpb.DeploymentState, err error) error {
	timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 100*time.Millisecond {
		// A node may end the stream at the deadline it was sent, just
		// before this side's timer fires.
		timedOut = true
	}
	switch {
	case c.explicitTimeout && timedOut: // gRPC may see the deadline before ctx does
		return fmt.Errorf("deployment %s still %s on the node when --timeout %v ran out (%w); follow it with `cyxwizctl watch %s`",
			id, stateName(last), c.timeout, context.DeadlineExceeded, id)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("deployment %s: the node ended the watch while it was %s; follow it with `cyxwizctl watch %s`", id, stateName(last), id)
	}
	return err
}

// settled reports whether a deployment in state s has finished deploying:
// it is serving, or it never will be without a new assignment.
func settled(s cyxwizpb.DeploymentState) bool {
	switch s {
	case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING,
		cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPING,
		cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED:
		return true
	}
	return false
}

// deployErr is the error for a deployment that settled without serving
// (nil while it is serving or still on its way).
func deployErr(st *cyxwizpb.DeploymentStatus) error {
	switch st.State {
	case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED:
		return fmt.Errorf("deployment %s failed: %s", st.DeploymentId, printable(st.Message))
	case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED:
		return fmt.Errorf("deployment %s stopped before it was ready (%s)", st.DeploymentId, printable(st.Message))
	case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPING:
		return fmt.Errorf("deployment %s is stopping: it will not become ready (%s)", st.DeploymentId, printable(st.Message))
	}
	return nil
}

// roleName is a guest role as ABI.md names it: preprocess, postprocess,
// batch_policy, format.
func roleName(r cyxwizpb.GuestRole) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "GUEST_ROLE_"))
}

func stateName(s cyxwizpb.DeploymentState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DEPLOYMENT_STATE_"))
}

func printStatusLine(w io.Writer, st *cyxwizpb.DeploymentStatus) {
	fmt.Fprintf(w, "%s: %s (%s)\n", printable(st.DeploymentId), stateName(st.State), printable(st.Message))
}

// progressBar shows a deployment's way to Ready. On a terminal it draws one
// line that it rewrites; elsewhere (a pipe, a log file) it writes a line
// each time the state or phase changes, and no carriage returns.
type progressBar struct {
	w     io.Writer
	tty   bool
	drawn bool   // tty: a line is on the screen without its newline
	last  string // not tty: the state and phase last written
}

func newProgressBar(w io.Writer) *progressBar { return &progressBar{w: w, tty: isTerminal(w)} }

// isTerminal reports whether w is a character device, as a terminal is.
func isTerminal(w io.Writer) bool {
	if o, ok := w.(*outWriter); ok {
		w = o.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progressBar) update(st *cyxwizpb.DeploymentStatus) {
	line := fmt.Sprintf("%-9s %s", stateName(st.State), printable(st.Message))
	phase := ""
	if pr := st.Progress; pr != nil && pr.TotalBytes > 0 {
		phase = pr.Phase
		frac := min(float64(pr.DoneBytes)/float64(pr.TotalBytes), 1) // a server may overshoot
		n := int(frac * 30)
		line = fmt.Sprintf("%-9s [%s%s] %3.0f%% %s/%s %s", stateName(st.State), strings.Repeat("#", n), strings.Repeat(".", 30-n),
			frac*100, humanBytes(pr.DoneBytes), humanBytes(pr.TotalBytes), printable(pr.Phase))
	}
	if !p.tty {
		if key := st.State.String() + "\x00" + phase; key != p.last {
			p.last = key
			fmt.Fprintln(p.w, strings.TrimRight(line, " "))
		}
		return
	}
	fmt.Fprintf(p.w, "\r%-80s", line)
	p.drawn = true
}

func (p *progressBar) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// stateList is what ls --state takes.
const stateList = "pending,fetching,loading,ready,running,stopping,stopped,failed"

func runList(ctx context.Context, c *client, args []string) error {
	fs := newFlagSet("ls")
	states := fs.String("state", "", "comma-separated `states` to show ("+stateList+")")
	if _, err := parseArgs(c, fs, args); err != nil {
		return err
	}
	req := &cyxwizpb.ListDeploymentsRequest{}
	for _, s := range strings.Split(*states, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		v, ok := cyxwizpb.DeploymentState_value["DEPLOYMENT_STATE_"+strings.ToUpper(s)]
		if !ok {
			return usagef("unknown state %q (want %s)", s, stateList)
		}
		req.States = append(req.States, cyxwizpb.DeploymentState(v))
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).ListDeployments(ctx, req)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODEL\tFORMAT\tSTATE\tOWNER\tAGE\tMESSAGE")
	for _, d := range resp.Deployments {
		age := ""
		if d.CreatedAt != nil {
			age = time.Since(d.CreatedAt.AsTime()).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable(d.DeploymentId), printable(d.Spec.GetModelName()), printable(d.Spec.GetFormat()),
			stateName(d.State), printable(d.Owner), age, printable(d.Message))
	}
	return tw.Flush()
}

func runModels(ctx context.Context, c *client, args []string) error {
	if _, err := parseArgs(c, newFlagSet("models"), args); err != nil {
		return err
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVERSION\tFORMAT\tSTATE")
	for _, d := range resp.Deployments {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", printable(d.Spec.GetModelName()), printable(d.Spec.GetModelVersion()), printable(d.Spec.GetFormat()), stateName(d.State))
	}
	return tw.Flush()
}

func runStatus(ctx context.Context, c *client, args []string) error {
	ids, err := parseArgs(c, newFlagSet("status"), args)
	if err != nil {
		return err
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: ids[0]})
	if err != nil {
		return err
	}
	st := resp.Status
	fmt.Fprintf(c.out, "id:       %s\nmodel:    %s (version %s, %s)\nstate:    %s\nmessage:  %s\nowner:    %s\nmemory:   %s\n",
		printable(st.DeploymentId), printable(st.Spec.GetModelName()), printable(st.Spec.GetModelVersion()), printable(st.Spec.GetFormat()),
		stateName(st.State), printable(st.Message), printable(st.Owner), humanBytes(st.MemoryBytes))
	if st.CreatedAt != nil {
		fmt.Fprintf(c.out, "created:  %s\nupdated:  %s\n", st.CreatedAt.AsTime().Format(time.RFC3339), st.UpdatedAt.AsTime().Format(time.RFC3339))
	}
	fmt.Fprintf(c.out, "artifact: %s sha256=%s\n", printable(st.Spec.GetModel().GetUri()), printable(st.Spec.GetModel().GetSha256()))
	for _, g := range st.Spec.GetGuests() {
		roles := make([]string, len(g.Roles))
		for i, r := range g.Roles {
			roles[i] = roleName(r)
		}
		fmt.Fprintf(c.out, "guest:    %s (%s) %s\n", printable(g.Name), strings.Join(roles, ","), printable(g.GetArtifact().GetUri()))
	}
	return nil
}

// stopMargin is how much longer than its drain a stop may take when
// --timeout is not given: the node unloads the model after draining.
const stopMargin = 30 * time.Second

func runStop(ctx context.Context, c *client, args []string) error {
	fs := newFlagSet("stop")
	drain := durationVar(fs, "drain", 0, 0, "how long to wait for in-flight requests (a `duration`; 0 = node default)")
	ids, err := parseArgs(c, fs, args)
	if err != nil {
		return err
	}
	req := &cyxwizpb.StopDeploymentRequest{DeploymentId: ids[0]}
	if *drain > 0 {
		req.DrainTimeout = durationpb.New(*drain)
	}
	ctx, cancel := c.deadline(ctx, *drain+stopMargin)
	defer cancel()
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).StopDeployment(ctx, req)
	if err != nil {
		return err
	}
	printStatusLine(c.out, resp.Status)
	return nil
}

func runWatch(ctx context.Context, c *client, args []string) error {
	ids, err := parseArgs(c, newFlagSet("watch"), args)
	if err != nil {
		return err
	}
	ctx, cancel := c.explicitDeadline(ctx)
	defer cancel()
	stream, err := cyxwizpb.NewDeploymentServiceClient(c.conn).WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: ids, Snapshot: true})
	if err != nil {
		return err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			// The end of a --timeout given to bound the watch is how it
			// was asked to end, not a failure ("DeadlineExceeded: stream
			// terminated by RST_STREAM with error code: CANCEL").
			if errors.Is(err, io.EOF) || c.explicitTimeout && (errors.Is(ctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded) {
				return nil
			}
			return err
		}
		st := ev.Status
		prog := ""
		if p := st.Progress; p != nil && p.TotalBytes > 0 {
			prog = fmt.Sprintf(" %s/%s", humanBytes(p.DoneBytes), humanBytes(p.TotalBytes))
		}
		// Local time, as the node logs it and the operator's clock shows it:
		// the bare clock time has no zone to tell UTC by.
		fmt.Fprintf(c.out, "%s %-12s %-9s %s%s\n", st.UpdatedAt.AsTime().Local().Format("15:04:05.000"), printable(st.DeploymentId), stateName(st.State), printable(st.Message), prog)
	}
}

// printable is a message from the node as one line of the terminal: its
// control characters (newlines, escape sequences) are escaped. A message
// quotes what a guest or a loader said, and a newline in it forged rows of
// ls and watch, an escape sequence drove the terminal.
func printable(s string) string { return escapeControls(s, false) }

// printableLines is printable keeping the newlines (an error on stderr).
func printableLines(s string) string { return escapeControls(s, true) }

// A byte that is not UTF-8 is escaped as \xNN, and so is every rune that
// is not graphic: controls, and formats such as U+202E, which reverses
// the text after it.
func escapeControls(s string, keepNewlines bool) string {
	escape := func(r rune) bool { return !unicode.IsGraphic(r) && !(keepNewlines && r == '\n') }
	if utf8.ValidString(s) && !strings.ContainsFunc(s, escape) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1: // 0x9b alone is CSI on some terminals
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case escape(r):
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
