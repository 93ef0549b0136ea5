export { writeFileAtomic } from './atomic.js';
export { JsonlFile } from './jsonl.js';
export { formatPercent, resultsJson, resultsMarkdown, writeResults } from './results.js';
export { runInDirectory, RUN_FILES } from './run-dir.js';
