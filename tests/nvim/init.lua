-- Minimal config for the headless Neovim test: this repo's plugin, the language server from this Python.
vim.opt.rtp:prepend(vim.env.DIFFILL_PLUGIN)
vim.opt.swapfile = false
require("diffill").setup({ cmd = { vim.env.DIFFILL_PYTHON, "-m", "lsp" }, debounce_ms = 30 })
