package cuda

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// kernelParams returns each extern "C" kernel's parameter list, from source.
func kernelParams(t *testing.T) map[string][]string {
	re := regexp.MustCompile(`extern "C" __global__ void (\w+)\(([^)]*)\)`)
	out := map[string][]string{}
	for _, f := range families {
		src, err := programSource(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(src, -1) {
			var ps []string
			for _, p := range strings.Split(m[2], ",") {
				ps = append(ps, strings.Join(strings.Fields(p), " "))
			}
			out[m[1]] = ps
		}
	}
	return out
}

// Every launch in the Go code passes as many arguments as its kernel takes,
// and pointer parameters get device addresses, not numbers (and vice versa)
// as far as the Go expression shows.
func TestLaunchArity(t *testing.T) {
	params := kernelParams(t)
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	launched := map[string]bool{}
	for _, fn := range files {
		if strings.HasSuffix(fn, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, fn, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "launch" && sel.Sel.Name != "launch1D") || len(call.Args) < 2 {
				return true
			}
			lit, ok := call.Args[1].(*ast.BasicLit)
			if !ok {
				return true
			}
			name, _ := strconv.Unquote(lit.Value)
			fixed := 5 // op, name, grid, block, shared
			if sel.Sel.Name == "launch1D" {
				fixed = 3 // op, name, n
			}
			args := call.Args[fixed:]
			ps, ok := params[name]
			pos := fset.Position(call.Pos())
			if !ok {
				t.Errorf("%s: kernel %s not found in src/", pos, name)
				return true
			}
			launched[name] = true
			if len(args) != len(ps) {
				t.Errorf("%s: %s launched with %d arguments, kernel takes %d (%s)", pos, name, len(args), len(ps), strings.Join(ps, ", "))
				return true
			}
			for i, a := range args {
				isPtr := strings.Contains(ps[i], "*")
				looksPtr := devicePointerExpr(a)
				if isPtr != looksPtr {
					t.Errorf("%s: %s argument %d (%s): pointer=%v in the kernel, pointer=%v in Go", pos, name, i, ps[i], isPtr, looksPtr)
				}
			}
			return true
		})
	}
	for name := range params {
		if !launched[name] {
			t.Errorf("kernel %s is never launched", name)
		}
	}
}

// devicePointerExpr says whether a Go launch argument is a device address:
// x.ptr, ptr(x), at(x, i), one of the uint64 address variables, or one of
// those plus an offset.
func devicePointerExpr(e ast.Expr) bool {
	switch v := e.(type) {
	case *ast.SelectorExpr:
		return v.Sel.Name == "ptr"
	case *ast.CallExpr:
		if id, ok := v.Fun.(*ast.Ident); ok {
			return id.Name == "ptr" || id.Name == "at"
		}
	case *ast.Ident:
		switch v.Name {
		case "docs", "dlab", "dids", "dlps", "d", "dpos", "dinv", "ztp", "idp", "lpp", "kdOut", "ceOut":
			return true
		}
	case *ast.BinaryExpr:
		return v.Op == token.ADD && devicePointerExpr(v.X)
	case *ast.ParenExpr:
		return devicePointerExpr(v.X)
	}
	return false
}
