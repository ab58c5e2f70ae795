-- Diffill for Neovim: starts `diffill lsp` for configured filetypes and shows its inline completions
-- as ghost text. On Neovim 0.12+ it uses vim.lsp.inline_completion; on 0.10/0.11 it draws its own
-- (extmarks: virt_text for the first line, virt_lines for the rest), requesting on TextChangedI /
-- CursorMovedI after a debounce and cancelling the request a newer one supersedes.
-- Multi-line edits (the server applies each as one workspace/applyEdit, so one `u` undoes it):
--   :DiffillFillHoles        fill every <FILL_ME> in the buffer (with a range: regenerate those lines too)
--   :[range]DiffillRewrite   rewrite the lines the model finds unlikely; with ! regenerate them all
--   :DiffillCompleteBlock    complete the body of the block around the cursor
-- Lua: require("diffill").fill_holes([l1, l2]), .rewrite(l1, l2, all), .complete_block().
local M = {}

local defaults = {
  cmd = { "diffill", "lsp" },
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact" },
  debounce_ms = 75,
  settings = {}, -- sent as initializationOptions.diffill (maxTokens, threshold, serverUrl, ...)
  keymaps = {
    accept = "<Tab>", -- falls through to a normal <Tab> when nothing is shown
    accept_word = "<M-Right>",
    accept_line = "<M-Down>",
    dismiss = "<C-]>",
    trigger = "<M-\\>",
  },
}

M.config = vim.deepcopy(defaults)
M.enabled = true
local ns = vim.api.nvim_create_namespace("diffill")
local state = { timer = nil, request = nil, suggestion = nil } -- suggestion: { buf, row, col, text, tick }

local function client_for(buf)
  return vim.lsp.get_clients({ bufnr = buf, name = "diffill" })[1]
end

function M.clear()
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_valid(buf) then
      vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
    end
  end
  state.suggestion = nil
end

local function cancel_request()
  if state.request then
    local client, id = state.request[1], state.request[2]
    pcall(function() client:cancel_request(id) end)
    state.request = nil
  end
end

local function render(buf, row, col, text)
  vim.api.nvim_buf_clear_namespace(buf, ns, 0, -1)
  local lines = vim.split(text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "DiffillGhostText" } }
  end
  vim.api.nvim_buf_set_extmark(buf, ns, row, col, {
    virt_text = { { lines[1], "DiffillGhostText" } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
  })
end

--- Ask the server for a completion at the cursor now.
function M.request()
  if not M.enabled then return end
  local buf = vim.api.nvim_get_current_buf()
  local client = client_for(buf)
  if not client then return end
  cancel_request()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 }
  local cursor = vim.api.nvim_win_get_cursor(0)
  local tick = vim.api.nvim_buf_get_changedtick(buf)
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    state.request = nil
    if err or not result then return end
    local items = result.items or result
    if vim.api.nvim_get_current_buf() ~= buf or vim.api.nvim_buf_get_changedtick(buf) ~= tick then return end
    local now = vim.api.nvim_win_get_cursor(0)
    if now[1] ~= cursor[1] or now[2] ~= cursor[2] or vim.fn.mode() ~= "i" then return end
    local item = items[1]
    if not item or not item.insertText or item.insertText == "" then return M.clear() end
    state.suggestion = { buf = buf, row = cursor[1] - 1, col = cursor[2], text = item.insertText, tick = tick }
    render(buf, cursor[1] - 1, cursor[2], item.insertText)
  end, buf)
  if ok then state.request = { client, id } end
end

local function schedule_request()
  M.clear()
  if state.timer then state.timer:stop() end
  state.timer = state.timer or vim.uv.new_timer()
  state.timer:start(M.config.debounce_ms, 0, vim.schedule_wrap(M.request))
end

--- Insert (part of) the suggestion. how: "all", "word" or "line". Returns false if nothing was shown.
function M.accept(how)
  local s = state.suggestion
  if not s or vim.api.nvim_get_current_buf() ~= s.buf then return false end
  local text = s.text
  if how == "word" then
    text = text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text
  elseif how == "line" then
    text = text:match("^[^\n]*\n?") or text
  end
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(s.buf, s.row, s.col, s.row, s.col, lines)
  local end_row = s.row + #lines - 1
  local end_col = (#lines == 1 and s.col or 0) + #lines[#lines]
  M.clear()
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  return true
end

function M.toggle()
  M.enabled = not M.enabled
  if not M.enabled then cancel_request(); M.clear() end
  vim.notify("diffill " .. (M.enabled and "on" or "off"))
end

-- Lines l1..l2 (1-based, inclusive) as an LSP range in the client's position encoding.
local function line_range(buf, client, l1, l2)
  local last = vim.api.nvim_buf_get_lines(buf, l2 - 1, l2, true)[1]
  local width = vim.lsp.util.character_offset(buf, l2 - 1, #last, client.offset_encoding)
  return { start = { line = l1 - 1, character = 0 }, ["end"] = { line = l2 - 1, character = width } }
end

-- Run a diffill.lsp.* command on the current buffer; args(buf, client) builds its argument object.
local function exec(command, title, args)
  local buf = vim.api.nvim_get_current_buf()
  local client = client_for(buf)
  if not client then return vim.notify("diffill: no language server attached", vim.log.levels.WARN) end
  local arg = vim.tbl_extend("force", { uri = vim.uri_from_bufnr(buf) }, args(buf, client))
  local function handler(err, result)
    if err then
      vim.notify("diffill: " .. (err.message or vim.inspect(err)), vim.log.levels.WARN)
    elseif result then
      vim.notify(result.message or "")
    end
  end
  if client.exec_cmd then -- 0.11+
    client:exec_cmd({ title = title, command = command, arguments = { arg } }, { bufnr = buf }, handler)
  else -- 0.10: dot form
    client.request("workspace/executeCommand", { command = command, arguments = { arg } }, handler, buf)
  end
end

--- Fill every <FILL_ME> in the buffer; lines l1..l2, if given, are regenerated as well.
function M.fill_holes(l1, l2)
  exec("diffill.lsp.fillHoles", "Diffill: fill holes", function(buf, client)
    return l1 and { ranges = { line_range(buf, client, l1, l2 or l1) } } or {}
  end)
end

--- Rewrite lines l1..l2: only the unlikely tokens, or everything when all is true.
function M.rewrite(l1, l2, all)
  exec("diffill.lsp.rewrite", "Diffill: rewrite", function(buf, client)
    return { range = line_range(buf, client, l1, l2), all = all and true or false }
  end)
end

--- Complete the body of the block around the cursor.
function M.complete_block()
  exec("diffill.lsp.completeBlock", "Diffill: complete block", function(_, client)
    return { position = vim.lsp.util.make_position_params(0, client.offset_encoding).position }
  end)
end

local function has_native()
  return vim.lsp.inline_completion ~= nil
end

local function start(buf)
  vim.lsp.start({
    name = "diffill",
    cmd = M.config.cmd,
    root_dir = vim.fn.getcwd(),
    init_options = { diffill = M.config.settings },
  }, { bufnr = buf })
  if has_native() then
    pcall(vim.lsp.inline_completion.enable, true, { bufnr = buf })
  end
end

--- The ghost text's highlight, unless the user or a colour scheme set DiffillGhostText: grey and italic, with a
--- terminal colour (8, "bright black": dark grey in 16- and 256-colour terminals) as well as a GUI one, so a
--- suggestion never looks like typed code (0.11's default `Comment` sets only a GUI colour).
local function define_highlight()
  vim.api.nvim_set_hl(0, "DiffillGhostText", {
    default = true, fg = "#808080", ctermfg = 8, italic = true, cterm = { italic = true },
  })
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  define_highlight()
  vim.api.nvim_create_autocmd("ColorScheme", {
    group = vim.api.nvim_create_augroup("diffill_hl", { clear = true }), callback = define_highlight,
  })
  local group = vim.api.nvim_create_augroup("diffill", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes,
    callback = function(ev) start(ev.buf) end,
  })
  if not has_native() then
    vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, { group = group, callback = schedule_request })
    vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
      group = group,
      callback = function() cancel_request(); M.clear() end,
    })
    local km = M.config.keymaps
    vim.keymap.set("i", km.accept, function()
      if not M.accept("all") then
        vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(km.accept, true, false, true), "n", false)
      end
    end, { desc = "diffill: accept suggestion" })
    vim.keymap.set("i", km.accept_word, function() M.accept("word") end, { desc = "diffill: accept a word" })
    vim.keymap.set("i", km.accept_line, function() M.accept("line") end, { desc = "diffill: accept a line" })
    vim.keymap.set("i", km.dismiss, function() cancel_request(); M.clear() end, { desc = "diffill: dismiss" })
    vim.keymap.set("i", km.trigger, M.request, { desc = "diffill: suggest now" })
  end
  vim.api.nvim_create_user_command("DiffillToggle", M.toggle, {})
  vim.api.nvim_create_user_command("DiffillTrigger", M.request, {})
  vim.api.nvim_create_user_command("DiffillFillHoles", function(o)
    if o.range > 0 then M.fill_holes(o.line1, o.line2) else M.fill_holes() end
  end, { range = true, desc = "diffill: fill every <FILL_ME> (and the range)" })
  vim.api.nvim_create_user_command("DiffillRewrite", function(o) M.rewrite(o.line1, o.line2, o.bang) end,
    { range = true, bang = true, desc = "diffill: rewrite the lines (! = all of them)" })
  vim.api.nvim_create_user_command("DiffillCompleteBlock", M.complete_block, { desc = "diffill: complete the block" })
  -- buffers already open when setup runs
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype) then
      start(buf)
    end
  end
end

--- For tests and statuslines: the suggestion on screen, or nil.
function M.current()
  return state.suggestion and state.suggestion.text or nil
end

return M
