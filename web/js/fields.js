// Reading an image object of GET /api/v1/images: the server's field names in
// one place, so pages do not guess.
import { pick } from './util.js';

export const ACTIVE = ['uploading', 'queued', 'analyzing'];

export const img = {
  id: (i) => i.id,
  ticket: (i) => pick(i, 'ticket'),
  status: (i) => pick(i, 'status'),
  label: (i) => pick(i, 'label', 'fs_label', 'volume_name'),
  uuid: (i) => pick(i, 'fs_uuid', 'uuid'),
  size: (i) => img.fsSize(i) ?? pick(i, 'size'),
  fsSize: (i) => {
    const v = pick(i, 'fs_size', 'fs_bytes', 'virtual_size');
    if (v !== undefined) return v;
    const bs = pick(i, 'block_size'), bc = pick(i, 'block_count');
    return bs && bc ? bs * bc : undefined;
  },
  imageSize: (i) => pick(i, 'size'),
  features: (i) => {
    const f = pick(i, 'features', 'fs_features');
    if (!f) return [];
    return Array.isArray(f) ? f : String(f).split(/[\s,]+/).filter(Boolean);
  },
  errors: (i) => pick(i, 'findings_errors', 'errors', 'n_errors'),
  warnings: (i) => pick(i, 'findings_warnings', 'warnings', 'n_warnings'),
  kernelErrors: (i) => pick(i, 'error_count', 'fs_error_count'),
  groupCount: (i) => pick(i, 'group_count'),
  lastErrorFunction: (i) => pick(i, 'last_error_function', 'last_error_func'),
  lastErrorLine: (i) => pick(i, 'last_error_line'),
  firstErrorFunction: (i) => pick(i, 'first_error_function', 'first_error_func'),
  firstErrorLine: (i) => pick(i, 'first_error_line'),
  created: (i) => pick(i, 'created_at', 'uploaded_at'),
  reason: (i) => pick(i, 'failure_reason', 'reason', 'error'),
  triage: (i) => pick(i, 'triage_status', 'triage'),
  assignee: (i) => pick(i, 'assignee'),
  tags: (i) => {
    const t = pick(i, 'tags');
    if (!t) return [];
    return Array.isArray(t) ? t : String(t).split(/[\s,]+/).filter(Boolean);
  },
  notes: (i) => pick(i, 'notes') || '',
};
