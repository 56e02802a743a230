package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/hub"
)

// Jobs may name a model or dataset by Hugging Face Hub repository id ("org/name" or
// "org/name@revision") where a local path is expected: configs.Load hands such a value to
// fetchJobRef, which downloads it into the huggingface_hub cache (or finds it there) and
// puts the snapshot directory in its place. `llamatune validate` fetches only a model's
// configuration and tokenizer files (its checks and memory estimate need nothing more;
// train, distill and eval fetch the weights), as do the data commands, which only
// tokenize. HF_HUB_OFFLINE=1 uses the cache alone.
func init() {
	configs.Remote = fetchJobRef

	var revision, repoType string
	var include []string
	cmd := &cobra.Command{
		Use:   "download REPO_ID[@REVISION] [--revision R] [--include GLOB]... [--repo-type model|dataset]",
		Short: "Fetch a model or dataset from the Hugging Face Hub into the shared cache and print its directory",
		Long: `Downloads a repository from the Hugging Face Hub into the cache huggingface_hub uses
($HF_HUB_CACHE, default $HF_HOME/hub = ~/.cache/huggingface/hub), so that what Python tools
downloaded is found here with no copy and the other way round, and prints the snapshot
directory (usable as model: in a job). Files already in the cache are not fetched again; a cut
download resumes where it stopped; LFS files are checked against their sha256.

Without --include a model brings config.json, generation_config.json, the tokenizer files and
the top-level *.safetensors (not *.bin, *.pth or original/), and a dataset everything.
--include takes fnmatch patterns as huggingface-cli does ('*' crosses '/', "dir/" is a folder).

Environment: HF_TOKEN (or the token file of huggingface-cli login) for gated and private
repositories, HF_ENDPOINT for a mirror, HF_HOME / HF_HUB_CACHE for the cache, HF_HUB_OFFLINE=1
for the cache alone.

A job may write model: org/name[@revision] (or distill.teacher.model:, or a dataset's path:)
directly: train, distill, eval, validate and the data commands fetch it first.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			defer func() { // a second run in one process (tests) starts from the defaults
				revision, include, repoType = "", nil, hub.Model
			}()
			id, rev := hub.ParseRef(args[0])
			if revision != "" {
				if rev != "" && rev != revision {
					return fmt.Errorf("%s and --revision %s disagree; give the revision once", args[0], revision)
				}
				rev = revision
			}
			if repoType != hub.Model && repoType != hub.Dataset {
				return fmt.Errorf("--repo-type %q: use model or dataset", repoType)
			}
			c := hubClient(cmd.ErrOrStderr())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			dir, err := c.Snapshot(ctx, repoType, id, rev, include)
			if err != nil {
				return interruptedDownload(ctx, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&revision, "revision", "", "branch, tag or commit (default main)")
	cmd.Flags().StringArrayVar(&include, "include", nil, "fetch only files matching this fnmatch pattern (repeatable)")
	cmd.Flags().StringVar(&repoType, "repo-type", hub.Model, "model or dataset")
	rootCmd.AddCommand(cmd)
}

// hubClient is the Hub client of the environment, reporting progress to w. newHubClient
// is replaced in tests.
var newHubClient = hub.FromEnv

func hubClient(w io.Writer) *hub.Client {
	c := newHubClient()
	c.Progress = w
	return c
}

// hubMetadataOnly makes job-time resolution fetch a model's configuration and tokenizer
// files only (validate and the data commands set it).
var hubMetadataOnly bool

// fetchJobRef is configs.Remote: a value that looks like a Hub repository id is fetched
// (Ctrl-C stops it; what was received is kept for the next run).
// A dataset resolves to the files of its split (hub.SplitPath).
func fetchJobRef(r configs.RemoteRef) (string, error) {
	if !hub.LooksLikeRepoID(r.Ref) {
		return "", nil
	}
	id, rev := hub.ParseRef(r.Ref)
	var include []string
	if r.Kind == hub.Model && (hubMetadataOnly || r.MetadataOnly) {
		include = hub.MetadataModelFiles
	}
	c := hubClient(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := c.Snapshot(ctx, r.Kind, id, rev, include)
	switch {
	case errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrNotCached):
		return "", fmt.Errorf("%w (it is not a local path either; relative paths are resolved against the job file's directory)", err)
	case err != nil:
		return "", interruptedDownload(ctx, err)
	case r.Kind == hub.Dataset:
		return hub.SplitPath(dir, r.Split)
	}
	return dir, nil
}

// interruptedDownload words the error of a download a signal stopped.
func interruptedDownload(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return errors.New("download interrupted: what was received is kept in the cache and the next run resumes it")
	}
	return err
}

// hubModelArg is a --model flag's directory: the value itself, or for a Hub repository id
// that is not a local path, its cached snapshot with the configuration and tokenizer files.
func hubModelArg(model string) (string, error) {
	hubMetadataOnly = true
	defer func() { hubMetadataOnly = false }()
	dir, err := fetchJobRef(configs.RemoteRef{Kind: hub.Model, Ref: model})
	if err != nil {
		return "", fmt.Errorf("--model %s: %w", model, err)
	}
	if dir == "" {
		return model, nil
	}
	return dir, nil
}
