package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/data/tokenizer"
)

func init() {
	var (
		model   string
		text    string
		special bool
		decode  bool
	)
	cmd := &cobra.Command{
		Use:   "tokenize --model DIR|ORG/NAME [--text S] [--special]",
		Short: "Print token ids, space-separated, one line per input line (stdin or --text)",
		Long: `Tokenize text with the tokenizer of a model directory (tokenizer.json or tokenizer.model).
Each input line (from --text, or stdin when --text is not given) gives one output line of
space-separated ids, without BOS/EOS and without the line's newline. With --special, the literal
text of special tokens (e.g. <|eot_id|>) gives their ids; without it they are plain text.
With --decode, each input line is a list of ids and the decoded text is printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if model == "" {
				return fmt.Errorf("tokenize: --model DIR is required (a directory with tokenizer.json or tokenizer.model)")
			}
			dir, err := hubModelArg(model) // --model org/name: the tokenizer from the Hub
			if err != nil {
				return err
			}
			tok, err := tokenizer.Load(dir)
			if err != nil {
				return err
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			line := func(s string) error {
				if decode {
					var ids []int
					for _, f := range strings.Fields(s) {
						id, err := strconv.Atoi(f)
						if err != nil {
							return fmt.Errorf("tokenize --decode: %q is not a token id", f)
						}
						ids = append(ids, id)
					}
					_, err := fmt.Fprintln(out, tok.Decode(ids))
					return err
				}
				var ids []int
				if special {
					ids = tok.EncodeWithSpecial(s)
				} else {
					ids = tok.Encode(s)
				}
				for i, id := range ids {
					if i > 0 {
						out.WriteByte(' ')
					}
					out.WriteString(strconv.Itoa(id))
				}
				return out.WriteByte('\n')
			}
			if cmd.Flags().Changed("text") {
				for _, l := range strings.Split(text, "\n") {
					if err := line(strings.TrimSuffix(l, "\r")); err != nil {
						return err
					}
				}
				return nil
			}
			r := bufio.NewReader(cmd.InOrStdin())
			for {
				l, err := r.ReadString('\n')
				if len(l) > 0 {
					l = strings.TrimSuffix(strings.TrimSuffix(l, "\n"), "\r")
					if e := line(l); e != nil {
						return e
					}
				}
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return fmt.Errorf("tokenize: reading stdin: %v", err)
				}
			}
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "model directory with tokenizer.json or tokenizer.model (and tokenizer_config.json)")
	cmd.Flags().StringVar(&text, "text", "", "text to tokenize instead of stdin (split into lines)")
	cmd.Flags().BoolVar(&special, "special", false, "recognize special-token text such as <|eot_id|>")
	cmd.Flags().BoolVar(&decode, "decode", false, "read ids and print the decoded text")
	rootCmd.AddCommand(cmd)
}
