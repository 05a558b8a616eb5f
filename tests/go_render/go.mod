module ccrl.test/go_render

go 1.19
