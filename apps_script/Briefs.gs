/**
 * Briefs: what a row asks for besides its own prompt. A prompt template filled
 * from the row's columns, what to leave out of the image, and the named
 * characters and products whose reference images go with it.
 *
 * The server composes the prompt again from what it receives
 * (shared/domain/briefs.py: compose, column_key, with_avoid); this copy lets the
 * sheet show the prompt and refuse a row before anything is sent. Both sides
 * pass the cases of shared/domain/template_cases.json
 * (tests/templates.test.js), with the same error wording.
 *
 * Named ranges (Data → Named ranges):
 *   prompt_template       the default template (first cell)
 *   template_<name>       other templates, chosen by a row's "template" column
 *   characters, products  two-column tables: name | reference (one image per
 *                         line; a name on several lines is several images of it)
 */

const TEMPLATE_RANGE = 'prompt_template';
const TEMPLATE_RANGE_PREFIX = 'template_';
/** What the "template" column says to choose prompt_template. */
const DEFAULT_TEMPLATE = 'default';
const CHARACTERS_RANGE = 'characters';
const PRODUCTS_RANGE = 'products';
/** Columns the pipeline writes: never a row's fields. */
const PIPELINE_COLUMNS = ['status_img', 'job_id', 'error_img'];
/** Columns this script writes (Review.gs): never a row's fields either. */
const SCRIPT_COLUMNS = ['review'];
const IMAGE_COLUMN_PATTERN = /^nano_img_\d+$/;

// The request's own bounds (shared/contracts/requests.py BatchItem and
// shared/domain/briefs.py; tests/unit/test_sheet_contract.py keeps them equal).
const AVOID_MAX_CHARS = 1000;
const FIELD_MAX_CHARS = 4000;
const MAX_FIELDS = 100;
const TEMPLATE_NAME_MAX_CHARS = 100;
const TEMPLATE_MAX_CHARS = 20000;
const REFERENCE_NAME_MAX_CHARS = 64;
const MAX_ROLE_REFERENCES = 100;

/** {{ and }} are literal braces; {name} a column; any other brace is an error. */
const TEMPLATE_TOKEN = /\{\{|\}\}|\{([^{}]*)\}|[{}]/g;
const AVOID_WORDING = 'Leave these out of the image entirely: ';
/** Python's str.strip() whitespace (str.isspace), so both sides trim alike. */
const PY_SPACE = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP = new RegExp('^[' + PY_SPACE + ']+|[' + PY_SPACE + ']+$', 'g');

/** A template that cannot be composed with the row: the reason, in the server's words. */
class TemplateError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TemplateError';
  }
}

function pyStrip_(text) {
  return String(text).replace(PY_STRIP, '');
}

/**
 * How a column is named in a placeholder: its header, lower case, every run of
 * other characters as one "_", stripped of "_" ("Mood / tone" is {mood_tone}).
 */
function columnKey_(header) {
  return pyStrip_(header).toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
}

/**
 * The template with each {column} replaced by the row's value, trimmed (braces
 * in a value are not placeholders); the result trimmed. `fields`: {header: value}
 * as sent (a later header with the same key wins, as on the server). Throws a
 * TemplateError for a stray brace, an empty placeholder, or a column the row
 * lacks or leaves empty.
 */
function composeTemplate_(template, fields) {
  const values = Object.create(null);
  Object.keys(fields).forEach(function (header) {
    values[columnKey_(header)] = pyStrip_(fields[header]);
  });
  const token = new RegExp(TEMPLATE_TOKEN.source, 'g');
  const out = [];
  let at = 0;
  let match;
  while ((match = token.exec(template)) !== null) {
    out.push(template.slice(at, match.index));
    at = token.lastIndex;
    const name = placeholderName_(match, template);
    if (name === null) {
      out.push(match[0][0]);
      continue;
    }
    if (!(name in values)) throw new TemplateError('{' + name + "} has no column '" + name + "'");
    if (!values[name]) {
      throw new TemplateError('{' + name + "} names column '" + name +
        "', which is empty in this row");
    }
    out.push(values[name]);
  }
  out.push(template.slice(at));
  return pyStrip_(out.join(''));
}

/** The column a token names; null for an escaped brace. */
function placeholderName_(match, template) {
  const token = match[0];
  if (token === '{{' || token === '}}') return null;
  // Characters as the server counts them (code points, not UTF-16 units).
  const where = Array.from(template.slice(0, match.index)).length + 1;
  if (match[1] === undefined) {
    throw new TemplateError("has a lone '" + token + "' at character " + where +
      ' (write {{ or }} for a brace itself)');
  }
  const name = columnKey_(match[1]);
  if (!name) throw new TemplateError('has an empty placeholder at character ' + where);
  return name;
}

/** What to leave out: one item per comma, semicolon or line. */
function avoidItems_(avoid) {
  return String(avoid || '').split(/[,;\n]+/).map(pyStrip_).filter(function (item) {
    return item !== '';
  });
}

/** The prompt and, if there is any, the model's wording of what to leave out. */
function withAvoid_(prompt, avoid) {
  const items = avoidItems_(avoid);
  return items.length ? prompt + '\n\n' + AVOID_WORDING + items.join(', ') + '.' : prompt;
}

/** Characters as the server counts them (code points). */
function charCount_(text) {
  return Array.from(text).length;
}

/**
 * What the briefs of one batch read from the spreadsheet, each at most once and
 * only when a row needs it: templates, the characters and products tables, and
 * the displayed values of the selected rows (a template's fields).
 */
function briefLibrary_(table, rowNumbers) {
  const templates = {};
  const tables = {};
  let displays = null;
  const first = rowNumbers.length ? Math.min.apply(null, rowNumbers) : HEADER_ROW + 1;
  const last = rowNumbers.length ? Math.max.apply(null, rowNumbers) : first;
  return {
    /** {name, text, range} of a template by the name a row gives ('default' too), or null. */
    template: function (name) {
      const key = name.toLowerCase();
      if (!(key in templates)) templates[key] = readTemplate_(table.ss, name);
      return templates[key];
    },
    /** The parsed table of a named range: {missing, lines, byKey, errors}. */
    table: function (rangeName) {
      if (!(rangeName in tables)) tables[rangeName] = readNamedTable_(table.ss, rangeName);
      return tables[rangeName];
    },
    /** The row's cells as the sheet shows them. */
    displayRow: function (row) {
      if (!displays) {
        displays = table.sheet.getRange(first, 1, last - first + 1, table.lastColumn)
          .getDisplayValues();
      }
      return displays[row - first] || [];
    },
  };
}

function namedRange_(ss, name) {
  try {
    return ss.getRangeByName(name);
  } catch (err) {
    return null;  // not a name a range can have
  }
}

function readTemplate_(ss, name) {
  const isDefault = name.toLowerCase() === DEFAULT_TEMPLATE;
  const rangeName = isDefault ? TEMPLATE_RANGE : TEMPLATE_RANGE_PREFIX + name;
  if (!isDefault && !/^[A-Za-z0-9_]+$/.test(name)) return null;
  const range = namedRange_(ss, rangeName);
  if (!range) return null;
  const first = range.getValues()[0];
  return {
    name: isDefault ? DEFAULT_TEMPLATE : name,
    range: rangeName,
    text: pyStrip_(first && first[0] !== undefined && first[0] !== null ? String(first[0]) : ''),
  };
}

/**
 * A two-column table (name | reference) from a named range: one reference per
 * line, lines in order; a first line reading "name" is a header. Names match
 * without regard to case; every line of one name carries its first spelling.
 */
function readNamedTable_(ss, rangeName) {
  const range = namedRange_(ss, rangeName);
  const result = { missing: !range, lines: [], byKey: {}, errors: [] };
  if (!range) return result;
  const values = range.getValues();
  if (values.length && values[0].length < 2) {
    result.errors.push('The named range "' + rangeName + '" must have two columns: name | ' +
      'reference.');
    return result;
  }
  values.forEach(function (line, i) {
    const name = cellText_(line[0]);
    const ref = cellText_(line[1]);
    if (!name && !ref) return;
    if (i === 0 && name.toLowerCase() === 'name') return;  // a header line
    const where = rangeName + ', line ' + (i + 1) + ': ';
    if (!name || !ref) {
      result.errors.push(where + (name ? '"' + clip_(name) + '" has no reference.' :
        'the reference "' + clip_(ref) + '" has no name.'));
      return;
    }
    if (charCount_(name) > REFERENCE_NAME_MAX_CHARS) {
      result.errors.push(where + 'the name "' + clip_(name) + '" is longer than ' +
        REFERENCE_NAME_MAX_CHARS + ' characters.');
      return;
    }
    if (!isReference_(ref)) {
      result.errors.push(where + '"' + clip_(ref) + '" must be an https:// link, a ' +
        'gs://bucket/object path, or an earlier image as scene:<scene_id>#<n> or job:<job_id>#<n>.');
      return;
    }
    const key = name.toLowerCase();
    if (!(key in result.byKey)) result.byKey[key] = name;
    result.lines.push({ key: key, name: result.byKey[key], ref: ref });
  });
  return result;
}

/** "Mara, Zed" -> ["Mara", "Zed"]: each once, in the order given. */
function splitNames_(text) {
  const seen = {};
  return String(text || '').split(/[,\n]+/).map(function (part) { return part.trim(); })
    .filter(function (name) {
      const key = name.toLowerCase();
      if (!name || seen[key]) return false;
      seen[key] = true;
      return true;
    });
}

/** Whether a header is a column the pipeline (or this script) writes. */
function isPipelineColumn_(name) {
  return PIPELINE_COLUMNS.indexOf(name) >= 0 || SCRIPT_COLUMNS.indexOf(name) >= 0 ||
    IMAGE_COLUMN_PATTERN.test(name);
}

/**
 * A row's columns as sent with it (`fields`, for a template's placeholders and for
 * the file names of a delivery): every column of the header row but the pipeline's
 * and this script's own, by header, as the sheet shows the cell (trimmed).
 */
function rowFields_(table, row, library) {
  const shown = library.displayRow(row);
  const fields = {};
  table.header.forEach(function (name, i) {
    if (!name || isPipelineColumn_(name) || table.columns[name] !== i) return;
    fields[name] = cellText_(shown[i]);
  });
  return fields;
}

/**
 * The brief of one row: a template (named by its "template" column, or the
 * default one when its prompt is empty) or its prompt, what to avoid, and its
 * characters' and products' references. Returns {prompt | template + fields,
 * avoid, composed (the prompt as the server will store it), references};
 * each problem is pushed to `errors`, naming the row.
 */
function rowBrief_(table, row, library, errors, tableErrors) {
  const where = 'Row ' + row + ': ';
  const get = function (name) { return cellText_(cellOf_(table, row, name)); };
  const brief = { references: [] };
  const named = get('template');
  const prompt = get('prompt');
  let template = null;
  if (named) {
    if (charCount_(named) > TEMPLATE_NAME_MAX_CHARS) {
      errors.push(where + 'template "' + clip_(named) + '" is not a template name.');
    } else {
      template = library.template(named);
      if (!template) {
        errors.push(where + 'template "' + clip_(named) + '" does not exist: add a named range ' +
          (named.toLowerCase() === DEFAULT_TEMPLATE ? '"' + TEMPLATE_RANGE + '"'
            : '"' + TEMPLATE_RANGE_PREFIX + named + '"') +
          ' whose first cell holds the template.');
      }
    }
  } else if (!prompt) {
    template = library.template(DEFAULT_TEMPLATE);
    if (!template) {
      errors.push(where + 'prompt is empty. Write one, or name a template in a "template" ' +
        'column (or add a "' + TEMPLATE_RANGE + '" named range).');
    }
  }
  const label = template ? 'template "' + template.name + '"' : '';
  if (template) {
    if (!template.text) {
      errors.push(where + label + ' is empty (the first cell of the named range "' +
        template.range + '").');
      template = null;
    } else if (charCount_(template.text) > TEMPLATE_MAX_CHARS) {
      errors.push(where + label + ' is ' + charCount_(template.text) + ' characters long; ' +
        'the limit is ' + TEMPLATE_MAX_CHARS + '.');
      template = null;
    }
  }
  // Every row carries its columns: a template's placeholders, and the file names of
  // a delivery (Review.gs), may use them. A row without a template sends its prompt
  // as `prompt`, not a second time among its columns (each column is limited to
  // FIELD_MAX_CHARS, a prompt to the deployment's length, and the body in bytes).
  const fields = rowFields_(table, row, library);
  if (!template) delete fields.prompt;
  brief.fields = fields;
  const headers = Object.keys(fields);
  if (headers.length > MAX_FIELDS) {
    errors.push(where + 'the sheet has ' + headers.length + ' columns of your own; a row is ' +
      'sent with at most ' + MAX_FIELDS + '.');
  }
  headers.forEach(function (header) {
    const n = charCount_(fields[header]);
    if (n > FIELD_MAX_CHARS) {
      errors.push(where + 'column "' + clip_(header) + '" holds ' + n + ' characters; a row ' +
        'is sent with at most ' + FIELD_MAX_CHARS + ' in each column.');
    }
  });
  if (template) {
    brief.template = { name: template.name, text: template.text };
    try {
      brief.composed = composeTemplate_(template.text, fields);
    } catch (err) {
      if (!(err instanceof TemplateError)) throw err;
      errors.push(where + label + (/^has /.test(err.message) ? ' ' : ': ') + err.message + '.');
    }
  } else if (prompt && !named) {
    brief.prompt = prompt;
    brief.composed = prompt;
  }

  const avoid = get('avoid');
  if (avoid) {
    if (charCount_(avoid) > AVOID_MAX_CHARS) {
      errors.push(where + 'avoid is ' + charCount_(avoid) + ' characters long; the limit is ' +
        AVOID_MAX_CHARS + '.');
    }
    brief.avoid = avoid;
  }
  if (brief.composed !== undefined) brief.composed = withAvoid_(brief.composed, avoid);

  [['characters', CHARACTERS_RANGE, 'character'], ['products', PRODUCTS_RANGE, 'product']]
    .forEach(function (kind) {
      const names = splitNames_(get(kind[0]));
      if (!names.length) return;
      const found = library.table(kind[1]);
      if (found.missing) {
        errors.push(where + kind[0] + ' names ' + names.map(quote_).join(', ') + ', but the ' +
          'spreadsheet has no named range "' + kind[1] + '" (a table: name | reference).');
        return;
      }
      if (found.errors.length && !tableErrors[kind[1]]) {
        tableErrors[kind[1]] = true;
        Array.prototype.push.apply(errors, found.errors);
      }
      const wanted = {};
      names.forEach(function (name) {
        const key = name.toLowerCase();
        if (key in found.byKey) {
          wanted[key] = true;
        } else if (!found.errors.length) {
          errors.push(where + kind[2] + ' "' + clip_(name) + '" is not in the named range "' +
            kind[1] + '".');
        }
      });
      found.lines.forEach(function (line) {
        if (wanted[line.key]) brief.references.push({ role: kind[2], name: line.name, ref: line.ref });
      });
    });
  return brief;
}

/**
 * The row's references checked against its model's limits (GET /limits: per kind
 * where Google counts kinds apart, products and style images being objects, and in
 * all with the batch's style references and the row's own pack).
 */
function referenceLimitErrors_(row, brief, styleCount, hasPack, modelName, shape) {
  const errors = [];
  const where = 'Row ' + row + ': ';
  const refs = brief.references;
  const characters = refs.filter(function (r) { return r.role === 'character'; }).length;
  const products = refs.length - characters;
  if (refs.length > MAX_ROLE_REFERENCES) {
    errors.push(where + plural_(refs.length, 'character and product image') + '; a row takes ' +
      'at most ' + MAX_ROLE_REFERENCES + '.');
  }
  if (!shape) return errors;
  if (shape.maxCharacters !== null && characters > shape.maxCharacters) {
    errors.push(where + plural_(characters, 'character image') + ' (' +
      countsByName_(refs, 'character') + '); ' + modelName + ' takes at most ' +
      shape.maxCharacters + '.');
  }
  const objects = products + styleCount;
  if (shape.maxObjects !== null && objects > shape.maxObjects) {
    errors.push(where + plural_(objects, 'object image') + ' (' +
      [products ? plural_(products, 'product image') : '',
        styleCount ? plural_(styleCount, 'style reference') : ''].filter(Boolean).join(' and ') +
      '); ' + modelName + ' takes at most ' + shape.maxObjects + ' products and style images.');
  }
  const total = styleCount + refs.length + (hasPack ? 1 : 0);
  if (shape.maxReferences !== null && total > shape.maxReferences) {
    const parts = [];
    if (styleCount) parts.push(plural_(styleCount, 'style reference'));
    if (characters) parts.push(plural_(characters, 'character image'));
    if (products) parts.push(plural_(products, 'product image'));
    if (hasPack) parts.push('its ref_pack_public_url');
    errors.push(where + plural_(total, 'reference image') + ' (' + parts.join(', ') + '); ' +
      modelName + ' takes at most ' + shape.maxReferences + '.');
  }
  return errors;
}

/** "Mara ×3, Zed" for the references of one role. */
function countsByName_(refs, role) {
  const counts = {};
  const order = [];
  refs.forEach(function (r) {
    if (r.role !== role) return;
    if (!(r.name in counts)) order.push(r.name);
    counts[r.name] = (counts[r.name] || 0) + 1;
  });
  return order.map(function (name) {
    return name + (counts[name] > 1 ? ' ×' + counts[name] : '');
  }).join(', ');
}

function quote_(text) {
  return '"' + clip_(text) + '"';
}

/**
 * The prompts of the first rows as the server will make them (template, avoid),
 * for the Estimate dialog; [] when no row uses a template or avoid (the prompt
 * cells say it all).
 */
function briefLines_(batch, max) {
  const scenes = batch.scenes;
  if (!scenes.some(function (s) { return s.brief && (s.brief.template || s.brief.avoid); })) return [];
  const shown = scenes.slice(0, max);
  const lines = ['Prompts as they will be sent' +
    (scenes.length > shown.length ? ' (first ' + shown.length + ' of ' + scenes.length + ' rows)' : '') +
    ':'];
  shown.forEach(function (scene) {
    const brief = scene.brief;
    lines.push('Row ' + scene.row + ' (' + scene.scene_id + ')' +
      (brief.template ? ', template "' + brief.template.name + '"' : '') +
      (brief.references.length ? ', with ' + brief.references.map(function (r) {
        return r.role + ' ' + r.name;
      }).filter(function (x, i, all) { return all.indexOf(x) === i; }).join(', ') : '') + ':');
    const text = brief.composed.length > 600 ? brief.composed.slice(0, 597) + '…' : brief.composed;
    text.split('\n').forEach(function (line) { lines.push(line ? '    ' + line : ''); });
  });
  return lines;
}
